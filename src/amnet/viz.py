"""Pictures of what a model detects: timelines, and the AME's action-aware mask (``amnet-viz``).

::

    amnet-viz --results RESULTS.json --out DIR [--gt ANNOTATIONS.json [--subset S]]
        [--features DIR --ckpt CKPT] [--videos ID,...] [--top N] [--min-score S]

Per video:

- ``<id>.png``: a timeline, one row per class (the classes of the ground truth and of the shown
  detections). Ground truth is drawn as dark bars in the upper half of a row, detections as
  coloured bars in the lower half, their opacity proportional to the score (relative to the
  video's best) and the best few labelled with their score. At most ``--top`` detections are
  drawn (default 30), so that a video's 200 low-scoring candidates do not hide the good ones.
- ``<id>_ame.png`` (PyTorch checkpoint + features only), after the paper's Figures 1 and 2,
  ground-truth actions shaded, three panels over time:

  1. the action-aware mask ``m(t)`` of the Action Masking Encoder;
  2. the action contrast of each snippet, ``cos(x_t, P̄) - cos(x_t, N̄)`` with ``P̄`` and ``N̄``
     the mask-weighted means of the positive (``m ⊙ x``) and negative (``(1 - m) ⊙ x``)
     components (what the AME's contrastive loss pulls towards and pushes from), for the
     embedding entering the AME and for the AME output: a working AME widens the gap between
     actions (high) and background (low);
  3. the per-snippet L2 norm (relative to the video's mean) of the input features, of the
     embedding before the AME and of the AME output. The AME ends in a LayerNorm, so its output
     norm is nearly flat: the saliency the AME adds is in the direction of the features
     (panel 2), not their length.

matplotlib is imported on first use (Agg backend, no display needed); without it every entry
point raises a one-line AMNetError.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.fileio import StagedFiles, atomic_write_bytes, check_out_folder

logger = logging.getLogger(__name__)

PROG = "amnet-viz"
__all__ = [
    "AMEProfile",
    "GroundTruth",
    "ame_profile",
    "check_matplotlib",
    "main",
    "plot_ame",
    "plot_timeline",
]

DEFAULT_TOP = 30
_LABELLED = 5  # detections per video annotated with their score
_DPI = 110
_GT_COLOUR = "#303030"
_MASK_COLOUR = "#d95f02"
_BEFORE_COLOUR = "#7570b3"
_AFTER_COLOUR = "#1b9e77"
_SHADE_COLOUR = "#fdd49e"


@dataclass
class GroundTruth:
    """Ground-truth actions of one video: ``segments [N, 2]`` seconds, ``labels [N]`` class ids."""

    segments: np.ndarray
    labels: np.ndarray


@dataclass
class AMEProfile:
    """Per-snippet curves of one video (each ``[T]``)."""

    mask: np.ndarray  # action-aware mask m(t) in (0, 1)
    contrast_before: np.ndarray  # action contrast of the embedding entering the AME
    contrast_after: np.ndarray  # action contrast of the AME output
    norm_input: np.ndarray  # L2 norm of the input features
    norm_before: np.ndarray  # L2 norm of the embedding entering the AME
    norm_after: np.ndarray  # L2 norm of the AME output


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AMNetError(
            "plots need matplotlib, which is not installed (pip install 'amnet[viz]')"
        ) from None


def _pyplot() -> Any:
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    # Its font-cache notices are not the user's business.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    return plt


def _class_colours(count: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20" if count > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(count)]


def _save(fig: Any, path: Path, staged: StagedFiles | None) -> None:
    """The PNG of ``fig``: into ``staged`` (published with the rest of its set) or, without one,
    atomically on its own."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    _pyplot().close(fig)
    if staged is not None:
        staged.write_bytes(path, buffer.getvalue())
    else:
        atomic_write_bytes(path, buffer.getvalue())


def _shade_gt(ax: Any, gt: GroundTruth | None) -> None:
    if gt is None:
        return
    for i, (s, e) in enumerate(gt.segments.tolist()):
        ax.axvspan(
            s, e, color=_SHADE_COLOUR, alpha=0.6, lw=0, label="ground truth" if i == 0 else None
        )


def plot_timeline(
    path: str | Path,
    video_id: str,
    dets: Detections,
    class_names: Sequence[str],
    duration: float,
    gt: GroundTruth | None = None,
    top: int = DEFAULT_TOP,
    min_score: float = 0.0,
    staged: StagedFiles | None = None,
) -> Path:
    """Write the timeline PNG of one video (see the module docstring); returns its path.
    With ``staged`` it is published with the other files of that set."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    path = Path(path)
    order = np.argsort(-dets.scores, kind="stable")
    order = order[dets.scores[order] >= min_score][:top]
    shown = dets.take(order)
    rows = sorted(
        {int(c) for c in shown.labels} | ({int(c) for c in gt.labels} if gt is not None else set())
    )
    colours = _class_colours(len(class_names))
    height = 1.3 + 0.55 * max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(12, height), layout="constrained")
    best = float(shown.scores.max()) if len(shown) else 1.0
    row_of = {c: i for i, c in enumerate(rows)}
    # The y axis is inverted below: a row's ground truth (offset -0.2) sits above its
    # detections (+0.2); without ground truth the detections fill the row.
    det_offset, det_height = (0.2, 0.36) if gt is not None else (0.0, 0.6)
    if gt is not None:
        for (s, e), c in zip(gt.segments.tolist(), gt.labels.tolist(), strict=True):
            ax.barh(row_of[int(c)] - 0.2, e - s, left=s, height=0.36, color=_GT_COLOUR, lw=0)
    # Lowest score first, so the best detections are drawn on top.
    for k in range(len(shown) - 1, -1, -1):
        (s, e), score, c = shown.segments[k], float(shown.scores[k]), int(shown.labels[k])
        alpha = 0.15 + 0.85 * (score / best if best > 0 else 1.0)
        ax.barh(
            row_of[c] + det_offset,
            max(e - s, duration * 1e-3),
            left=s,
            height=det_height,
            color=colours[c % len(colours)],
            alpha=alpha,
            edgecolor="black",
            lw=0.4,
        )
        if k < _LABELLED:
            ax.annotate(
                f"{score:.2f}",
                (s + (e - s) / 2, row_of[c] + det_offset),
                ha="center",
                va="center",
                fontsize=7,
                color="black",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )
    ax.set_yticks(range(len(rows)), [class_names[c] for c in rows])
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.invert_yaxis()
    ax.set_xlim(0, max(duration, 1e-6))
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    if len(shown):
        title = (
            f"{video_id}: top {len(shown)} of {len(dets)} detections "
            f"(scores {float(shown.scores.min()):.3f}–{best:.3f}; opacity ∝ score)"
        )
    else:
        title = f"{video_id}: no detections" + (f" (of {len(dets)}) shown" if len(dets) else "")
    ax.set_title(title, fontsize=10, loc="left")
    if gt is not None:
        handles = [
            Patch(color=_GT_COLOUR, label="ground truth (upper bars)"),
            Patch(color="grey", alpha=0.6, label="detections (lower bars)"),
        ]
        # Above the axes, right of the title: inside, it would hide detections near the end.
        ax.legend(
            handles=handles,
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=len(handles),
            fontsize=8,
            frameon=False,
            borderaxespad=0.2,
        )
    if not rows:
        ax.text(0.5, 0.5, "nothing to draw", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks([])
    _save(fig, path, staged)
    return path


def _action_contrast(z: Any, m: Any) -> Any:
    """``cos(z_t, mean_P) - cos(z_t, mean_N)`` per snippet, with the mask-weighted means of the
    positive (``m * z``) and negative (``(1 - m) * z``) components, as the AME's contrastive loss
    uses them."""
    from torch.nn import functional as F

    pos = (z * m).sum(0) / m.sum().clamp_min(1e-6)
    neg = (z * (1 - m)).sum(0) / (1 - m).sum().clamp_min(1e-6)
    return F.cosine_similarity(z, pos[None], dim=-1) - F.cosine_similarity(z, neg[None], dim=-1)


def ame_profile(
    model: Any, feats: np.ndarray, max_seq_len: int, overlap: float
) -> AMEProfile | None:
    """The AME curves of one ``[T, C]`` video through a PyTorch AMNet; None without an AME
    or without snippets.

    The mask comes from :func:`amnet.inference.actionness` (local, the whole video at once).
    The rest comes from ``AMNet.encode`` on the inference chunks (the AME attends within a
    chunk); where chunks overlap, values are averaged.
    """
    import torch

    from amnet.inference import actionness
    from amnet.postprocess import plan_chunks

    if getattr(model, "ame", None) is None or len(feats) == 0:
        return None
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if not feats.flags.writeable:  # memory-mapped input: torch warns on read-only memory
        feats = feats.copy()
    total = feats.shape[0]
    mask_curve = np.asarray(actionness(model, feats), dtype=np.float64)
    sums = np.zeros((4, total))  # contrast before/after, norm before/after
    counts = np.zeros(total)
    device = model.input_mean.device
    with torch.inference_mode():
        for start, end in plan_chunks(total, max_seq_len, overlap):
            n = end - start
            x = torch.from_numpy(feats[start:end])[None].to(device)
            emb, enc, logits, _, _ = model.encode(x, torch.tensor([n], device=device))
            m = torch.sigmoid(logits[0, :n]).unsqueeze(-1)
            before, after = emb[0, :n], enc[0, :n]
            rows = (
                _action_contrast(before, m),
                _action_contrast(after, m),
                before.norm(dim=-1),
                after.norm(dim=-1),
            )
            for i, row in enumerate(rows):
                sums[i, start:end] += row.double().cpu().numpy()
            counts[start:end] += 1
    sums /= np.maximum(counts, 1)
    return AMEProfile(
        mask=mask_curve,
        contrast_before=sums[0],
        contrast_after=sums[1],
        norm_input=np.linalg.norm(feats, axis=1).astype(np.float64),
        norm_before=sums[2],
        norm_after=sums[3],
    )


def _relative(x: np.ndarray) -> np.ndarray:
    mean = float(np.mean(x)) if len(x) else 0.0
    return x / mean if mean > 0 else x


def plot_ame(
    path: str | Path,
    video_id: str,
    profile: AMEProfile,
    fps: float,
    feature_stride: float,
    num_frames: float,
    gt: GroundTruth | None = None,
    staged: StagedFiles | None = None,
) -> Path:
    """Write the AME PNG of one video (see the module docstring); returns its path.
    With ``staged`` it is published with the other files of that set."""
    plt = _pyplot()
    path = Path(path)
    t = (np.arange(len(profile.mask)) * feature_stride + num_frames / 2) / fps
    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=(12, 7.5), sharex=True, layout="constrained", height_ratios=[1, 1.3, 1]
    )
    for ax in (ax1, ax2, ax3):
        _shade_gt(ax, gt)
        ax.grid(alpha=0.3)
    ax1.plot(t, profile.mask, color=_MASK_COLOUR, lw=1.2, label="action-aware mask m(t)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_ylabel("mask")
    ax1.set_title(
        f"{video_id}: Action Masking Encoder" + (" (shaded: ground-truth actions)" if gt else ""),
        fontsize=10,
        loc="left",
    )
    ax2.axhline(0.0, color="black", lw=0.6)
    ax2.plot(
        t, profile.contrast_before, color=_BEFORE_COLOUR, lw=1.0, alpha=0.9,
        label="before AME (embedding)",
    )  # fmt: skip
    ax2.plot(t, profile.contrast_after, color=_AFTER_COLOUR, lw=1.3, label="after AME (output)")
    ax2.set_ylabel("action contrast\ncos(x,P̄) − cos(x,N̄)")
    ax3.plot(t, _relative(profile.norm_input), color="grey", lw=0.8, label="input features")
    ax3.plot(
        t, _relative(profile.norm_before), color=_BEFORE_COLOUR, lw=1.0,
        label="before AME (embedding)",
    )  # fmt: skip
    ax3.plot(
        t, _relative(profile.norm_after), color=_AFTER_COLOUR, lw=1.3,
        label="after AME (output, layer-normalised)",
    )  # fmt: skip
    ax3.set_ylabel("‖x‖ / video mean")
    ax3.set_xlabel("time (s)")
    for ax in (ax1, ax2, ax3):
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    end = float(t[-1]) + num_frames / 2 / fps if len(t) else 1.0
    ax3.set_xlim(0, max(end, 1e-6))
    _save(fig, path, staged)
    return path


# -- amnet-viz ------------------------------------------------------------------------------


def _class_names_from_results(path: Path) -> list[str]:
    from amnet.fileio import read_json

    data = read_json(path, "results file")
    results = data.get("results") if isinstance(data, Mapping) else None
    if not isinstance(results, Mapping):
        raise AMNetError(f"{path}: not a results file (no 'results' object)")
    by_id: dict[int, str] = {}
    names: set[str] = set()
    for entries in results.values():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("label"), str):
                continue
            names.add(entry["label"])
            label_id = entry.get("label_id")
            if isinstance(label_id, int) and not isinstance(label_id, bool) and label_id >= 0:
                by_id.setdefault(label_id, entry["label"])
    if by_id and set(by_id.values()) == names:
        return [by_id.get(i, f"class_{i}") for i in range(max(by_id) + 1)]
    return sorted(names)


def _merge_class_names(gt_names: Sequence[str], results_path: Path) -> list[str]:
    """The annotation file's class list, completed by the results file's classes.

    An annotation file names only the classes it contains, so a few videos' ground truth may
    lack classes the model detects; the results file's ``label_id`` fields place those.
    """
    names = list(gt_names)
    extra = _class_names_from_results(results_path)
    placeholder = [f"class_{i}" for i in range(len(extra))]
    for i, label in enumerate(extra):
        if label == placeholder[i] or label in names:
            continue
        if i < len(names) and names[i] == f"class_{i}":
            names[i] = label
        elif i >= len(names):
            names += [f"class_{j}" for j in range(len(names), i)] + [label]
        else:
            names.append(label)  # read_results then reports a label_id mismatch, if any
    return names


def build_parser() -> Any:
    from amnet.cli.common import OneLineParser

    parser = OneLineParser(
        prog=PROG,
        description="Draw per-video timelines of detections (and ground truth), and for a "
        "PyTorch checkpoint the AME's action-aware mask with the action contrast and feature "
        "norm before and after the AME.",
    )
    parser.add_argument("--results", required=True, metavar="RESULTS.json", help="detections")
    parser.add_argument("--gt", metavar="ANNOTATIONS.json", help="ground truth to draw")
    parser.add_argument("--subset", metavar="S", help="only the videos of this --gt subset")
    parser.add_argument("--features", metavar="DIR", help="folder of <video_id>.npy (with --ckpt)")
    parser.add_argument("--ckpt", metavar="CKPT", help="PyTorch checkpoint for the AME plots")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument("--videos", metavar="ID,...", help="only these videos (default: all)")
    parser.add_argument(
        "--top",
        type=int,
        default=DEFAULT_TOP,
        help="detections drawn per video (default: %(default)s)",
    )
    parser.add_argument("--min-score", type=float, default=0.0, help="hide detections below this")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _run(argv: list[str] | None) -> int:
    from amnet.annotations import build_label_map, load_annotations, select_subset
    from amnet.cli.common import setup_logging
    from amnet.results import read_results

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.top < 1:
        raise AMNetError(f"--top must be >= 1, got {args.top}")
    if not 0 <= args.min_score <= 1:  # scores are probabilities; also refuses NaN
        raise AMNetError(f"--min-score must be in [0, 1], got {args.min_score}")
    if (args.ckpt is None) != (args.features is None):
        raise AMNetError("--features and --ckpt go together (the AME plots need both)")
    if args.subset and not args.gt:
        raise AMNetError("--subset selects videos of --gt; give --gt too")
    check_matplotlib()
    results_path = Path(args.results)

    annotations = None
    if args.gt:
        everything = load_annotations(args.gt)
        class_names = _merge_class_names(
            build_label_map(everything.values(), args.gt), results_path
        )
        annotations = select_subset(everything, args.subset, args.gt) if args.subset else everything
    else:
        class_names = _class_names_from_results(results_path)
    results = read_results(results_path, class_names)

    if args.videos:
        videos = [v.strip() for v in args.videos.split(",") if v.strip()]
        unknown = [
            v for v in videos if v not in results and (annotations is None or v not in annotations)
        ]
        if unknown:
            raise AMNetError(f"video(s) not in {results_path}: {', '.join(unknown[:5])}")
    else:
        videos = sorted(results if annotations is None else set(results) & set(annotations))
        if not videos:
            raise AMNetError(f"{results_path}: no videos to draw")

    model = None
    cfg: dict[str, Any] = {}  # the checkpoint's, with the model
    if args.ckpt:
        from amnet.checkpoint import load_model

        model, cfg, _ = load_model(args.ckpt)
        features_dir = Path(args.features)
        if not features_dir.is_dir():
            raise AMNetError(f"{features_dir}: features folder not found")

    out = check_out_folder(args.out, "--out")  # made with its first picture

    from tqdm import tqdm

    from amnet.console import bar_disabled

    # Every PNG is staged and published together at the end: a failure leaves no partial set.
    staged = StagedFiles()
    try:
        for vid in tqdm(
            videos,
            desc=PROG,
            unit="video",
            disable=args.quiet or len(videos) < 2 or bar_disabled(),
            leave=False,
        ):
            dets = results.get(vid, Detections.empty())
            gt = None
            duration = None
            if annotations is not None and vid in annotations:
                ann = annotations[vid]
                gt = GroundTruth(ann.segments, ann.label_ids)
                if len(ann.labels) and (ann.label_ids < 0).any():
                    gt = GroundTruth(
                        ann.segments, np.array([class_names.index(x) for x in ann.labels])
                    )
                duration = ann.duration
            feats = None
            if model is not None:
                from amnet.fileio import read_features

                feats = read_features(
                    Path(args.features) / f"{vid}.npy", int(cfg["dataset"]["input_dim"])
                )
            if duration is None:
                if feats is not None:
                    data = cfg["dataset"]
                    from amnet.timebase import snippets_duration

                    duration = snippets_duration(
                        len(feats), data["default_fps"], data["feature_stride"], data["num_frames"]
                    )
                else:
                    duration = float(dets.segments.max()) if len(dets) else 1.0
            plot_timeline(
                out / f"{vid}.png", vid, dets, class_names, duration, gt, args.top, args.min_score,
                staged=staged,
            )  # fmt: skip
            if model is not None and feats is not None and len(feats):
                data = cfg["dataset"]
                stride, frames = data["feature_stride"], data["num_frames"]
                if data["force_upsampling"]:  # the snippets the model sees
                    from amnet.timebase import resample_snippets, resampled_timebase

                    length = data["max_seq_len"]
                    stride, frames = resampled_timebase(len(feats), stride, frames, length)
                    feats = resample_snippets(feats, length)
                profile = ame_profile(
                    model, feats, data["max_seq_len"], cfg["test_cfg"]["chunk_overlap"]
                )
                if profile is not None:
                    fps = (
                        annotations[vid].fps
                        if annotations is not None and vid in annotations
                        else data["default_fps"]
                    )
                    plot_ame(
                        out / f"{vid}_ame.png",
                        vid,
                        profile,
                        fps,
                        stride,
                        frames,
                        gt,
                        staged=staged,
                    )
    except BaseException:
        staged.discard()
        raise
    written = len(staged)
    staged.publish()
    if not args.quiet:
        logger.info("wrote %d PNG file(s) to %s", written, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    from amnet.cli.common import run_cli

    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
