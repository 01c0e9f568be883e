"""``amnet-infer``: detections for feature files, with any backend (ONNX Runtime, TensorRT, PyTorch).

::

    amnet-infer --engine MODEL FEATURES... [--output FILE] [--format activitynet|jsonl|csv]
        [--min-score S] [--top-k K] [--device cpu|cuda] [--fps F] [--feature-stride N]
        [--num-frames N] [--threads N] [--precision fp32|bf16] [--runtime openvino]
        [--batch-size N] [--postprocess-workers N] [--plot DIR] [--skip-bad] [--quiet]
        [--class-scores SCORES.json [--class-topk K]] [--class-thresholds OPS.json]

    amnet-infer --engine MODEL FEATURES... --workers N [--ray-address ADDR] [--resume-from OUT]
    amnet-infer --engine MODEL --stream --dim C [--min-score S] [...]   < raw float32 rows
    amnet-infer --engine MODEL --describe [--runtime openvino] [--precision bf16] [...]

MODEL is a ``.onnx``, ``.plan``/``.engine`` (with its ``.plan.json``) or ``.pt`` file; FEATURES
are ``.npy`` files ``[T, C]`` or folders of them (sorted, not recursive, hidden files left out:
a copy from macOS brings ``._<name>.npy`` files that are not arrays). The video id is the
file stem. Output (stdout unless ``--output``, which is written atomically):

- ``activitynet`` (default): the ActivityNet results JSON ``{"version", "results":
  {video_id: [{"label", "label_id", "score", "segment": [s, e]}]}, "external_data": {}}``;
- ``jsonl``: one line per video, ``{"video_id", "duration", "detections": [...]}`` (videos
  without detections included);
- ``csv``: ``video_id,start,end,label,label_id,score``, one row per detection.

Files are read one ahead of the model and run as one stream: windows of consecutive videos
share backend calls of ``--batch-size`` (on a GPU, fuller calls), and ``--postprocess-workers
N`` post-processes each video in a pool of N processes while the next windows run (on a GPU
host the CPU's post-processing otherwise takes longer than the model).

``--class-scores SCORES.json`` (a class-agnostic model, ``dataset.num_classes: 1``) takes each
video's classes from a video-level classifier: every detection is repeated for the video's
``--class-topk`` (default 2) most likely classes, scored ``sqrt(score * p)``
(:mod:`amnet.class_scores`); the file's ``"class"`` list names the classes.

``--class-thresholds OPS.json`` keeps only the detections that score at least their class's
threshold, from an operating points file (``amnet-eval --operating-points``,
:mod:`amnet.thresholds`); every output class must be in the file, and one without a threshold
keeps no detection. It applies after ``--class-scores`` and in every mode.

``--workers N`` runs the files on a Ray cluster (the ``[scale]`` extra; a local one unless
``--ray-address``), one Detector per worker, with the same output as one process; finished
videos are kept in shards beside ``--output`` so that ``--resume-from OUT`` continues a killed
job (:mod:`amnet.deploy.ray_batch`).

``--stream`` follows one live video: it reads raw little-endian float32 rows of ``C`` values
from stdin as they come (a feature extractor piping into it) and writes one JSON line per
detection to stdout, ``{"label", "label_id", "segment": [s, e], "score"}``, as soon as it is
final (:mod:`amnet.deploy.stream`); the rest at the end of the input. A stream has no
per-video cap (``--top-k`` does not apply). Input that ends inside a row, NaN/Inf or a ``--dim``
that is not the model's stops it with exit 2.

``--describe`` opens the model as a run with the same options would (so it also checks that
it loads here: the runtime, the device, OpenVINO's agreement with ONNX Runtime) and prints
:meth:`Detector.describe` as JSON: backend, device, precision, quantization, classes, feature
convention, window, post-processing cap and the model's source (checkpoint SHA-256, weights,
the amnet version that exported it).

Bad inputs (missing, empty, truncated or non-.npy files, pickled/object arrays, wrong rank or
channel count, NaN/Inf, non-numeric dtypes, a folder without .npy files, duplicate video ids):

- by default every input is checked before anything runs; if any is bad, the bad files are
  listed on stderr, nothing is written, and the exit status is 2;
- with ``--skip-bad`` the good files are processed and written, the skipped ones are listed on
  stderr, and the exit status is 3 (so a partial result is never mistaken for a full one).
  When no file is good, nothing is written and the exit status is 2.

Exit status: 0 success, 2 bad input or model (nothing written), 3 success with skipped files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from amnet import __version__
from amnet.class_scores import DEFAULT_TOPK, ClassScores, fuse_class_scores, read_class_scores
from amnet.cli.common import OneLineParser, run_cli, setup_logging
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.fileio import (
    StagedFiles,
    atomic_write_text,
    channel_mismatch,
    check_out_folder,
    check_out_path,
    exclusive_lock,
    read_ahead,
    read_features,
)
from amnet.results import results_to_json
from amnet.thresholds import apply_class_thresholds, read_class_thresholds

logger = logging.getLogger("amnet.deploy.infer")

PROG = "amnet-infer"
FORMATS = ("activitynet", "jsonl", "csv")
EXIT_SKIPPED = 3
# Bad files named in full on stderr; the rest are counted.
_MAX_LISTED = 8
# Arrays kept in memory between the checking pass and the run; larger inputs are read twice.
_CACHE_BYTES = 512 << 20


@dataclass
class FeatureFile:
    path: Path
    video_id: str


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Detect actions in per-snippet feature files (.npy [T, C]) with an AMNet "
        "model: .onnx (ONNX Runtime), .plan/.engine (TensorRT) or .pt (PyTorch).",
        epilog="Bad inputs: by default all inputs are checked first and any bad one stops the "
        "run (bad files listed on stderr, nothing written, exit 2). With --skip-bad the good "
        "files are processed and written, the skipped files are listed on stderr, and the "
        "exit status is 3. Exit 0: every file processed.",
    )
    parser.add_argument("--engine", required=True, metavar="MODEL", help="model file")
    parser.add_argument(
        "features", nargs="*", metavar="FEATURES", help=".npy files or folders of them"
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="one live video: raw little-endian float32 rows on stdin, JSON lines of final "
        "detections on stdout as they come",
    )
    parser.add_argument(
        "--dim", type=int, metavar="C", help="--stream: values per row (the model's input_dim)"
    )
    parser.add_argument(
        "--describe",
        action="store_true",
        help="load the model with these options and print what it runs as JSON (backend, "
        "precision, quantization, classes, feature convention, window, source checkpoint)",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="run on N Ray workers (the [scale] extra)"
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="--workers: an existing Ray cluster (default: $RAY_ADDRESS if set, else a local "
        "one started for the run)",
    )
    parser.add_argument(
        "--resume-from",
        metavar="OUT",
        help="--workers: continue the killed job that was writing OUT (skips finished videos)",
    )
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write here (default, or '-': stdout)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="activitynet",
        help="output format (default: %(default)s)",
    )
    parser.add_argument("--min-score", type=float, metavar="S", help="drop detections below S")
    parser.add_argument("--top-k", type=int, metavar="K", help="at most K detections per video")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="cpu or cuda (default: cpu; cuda for TensorRT); never falls back silently",
    )
    parser.add_argument("--fps", type=float, metavar="F", help="override the model's fps")
    parser.add_argument(
        "--feature-stride", type=int, metavar="N", help="override the frames between snippets"
    )
    parser.add_argument(
        "--num-frames", type=int, metavar="N", help="override the frames per snippet"
    )
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads per inference call")
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="windows per backend call, packed across videos (default: 1 on a CPU, 4 on a GPU)",
    )
    parser.add_argument(
        "--postprocess-workers",
        type=int,
        metavar="N",
        help="post-process in N processes while the backend runs (pays on a GPU host)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help=".pt models and --runtime openvino (for a static INT8 model, its float part): "
        "bf16 on hardware with bfloat16 (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime",
        choices=("onnxruntime", "openvino"),
        help=".onnx models: ONNX Runtime (default) or OpenVINO (the [openvino] extra)",
    )
    parser.add_argument(
        "--class-scores",
        metavar="SCORES.json",
        help="a class-agnostic (one-class) model: take each video's classes from this "
        "video-level classifier file ({'results': {video_id: [p...]}, 'class': [names]}); "
        "each detection is repeated for the --class-topk classes, scored sqrt(score * p)",
    )
    parser.add_argument(
        "--class-topk",
        type=int,
        metavar="K",
        help=f"--class-scores: classes per video (default: {DEFAULT_TOPK})",
    )
    parser.add_argument(
        "--class-thresholds",
        metavar="OPS.json",
        help="keep only detections scoring at least their class's threshold, from an "
        "operating points file (amnet-eval --operating-points); a class without one keeps none",
    )
    parser.add_argument(
        "--plot", metavar="DIR", help="also write a timeline PNG per video here (matplotlib)"
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="process the good files, list the bad ones, exit 3 (default: fail, write nothing)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# -- inputs ---------------------------------------------------------------------------------


def expand_inputs(items: Sequence[str]) -> list[FeatureFile]:
    """Files as given, folders as their ``*.npy`` entries (sorted, not recursive); in a folder,
    hidden files (``.name.npy``, macOS's ``._name.npy``) are left out. An entry that is not a
    readable file (a dangling link, a FIFO, a folder) is kept, to be reported as bad, not
    dropped."""
    files: list[FeatureFile] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() == ".npy" and not p.name.startswith(".")
            )
            if not found:
                raise AMNetError(f"{path}: folder has no .npy feature files")
            files.extend(FeatureFile(p, p.stem) for p in found)
        elif path.exists() or path.suffix:
            files.append(FeatureFile(path, path.stem))  # a missing file is reported as bad
        else:
            raise AMNetError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        if f.video_id in seen:
            raise AMNetError(
                f"video id {f.video_id!r} given twice ({seen[f.video_id]} and {f.path}); "
                "video ids are file stems and must be unique"
            )
        seen[f.video_id] = f.path
    return files


def _exit_status(bad: Sequence[tuple[Path, str]], files: Sequence[FeatureFile]) -> int:
    """0, or (files were skipped with --skip-bad) list them on stderr and return 3."""
    if not bad:
        return 0
    print(
        f"{PROG}: skipped {len(bad)} of {len(files)} feature files:\n{_bad_list(bad)}",
        file=sys.stderr,
    )
    return EXIT_SKIPPED


def _bad_list(bad: Sequence[tuple[Path, str]]) -> str:
    lines = [f"  {msg}" for _, msg in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return "\n".join(lines)


# -- outputs --------------------------------------------------------------------------------


def format_output(
    fmt: str,
    results: dict[str, Detections],
    durations: dict[str, float],
    class_names: Sequence[str],
) -> str:
    if fmt == "activitynet":
        return (
            json.dumps(results_to_json(results, class_names, f"amnet-infer {__version__}")) + "\n"
        )
    if fmt == "jsonl":
        lines = []
        for vid, det in results.items():
            entries = results_to_json({vid: det}, class_names)["results"][vid]
            lines.append(
                json.dumps({"video_id": vid, "duration": durations[vid], "detections": entries})
            )
        return "".join(line + "\n" for line in lines)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "start", "end", "label", "label_id", "score"])
    for vid, det in results.items():
        for (s, e), score, c in zip(
            det.segments.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
        ):
            writer.writerow([vid, repr(s), repr(e), class_names[c], c, repr(score)])
    return buffer.getvalue()


def _check_options(args: Any) -> None:
    if args.min_score is not None and not (
        math.isfinite(args.min_score) and 0 <= args.min_score <= 1
    ):
        raise AMNetError(f"--min-score must be in [0, 1], got {args.min_score}")
    for flag, value in (
        ("--top-k", args.top_k),
        ("--feature-stride", args.feature_stride),
        ("--num-frames", args.num_frames),
        ("--threads", args.threads),
        ("--batch-size", args.batch_size),
        ("--postprocess-workers", args.postprocess_workers),
        ("--class-topk", args.class_topk),
    ):
        if value is not None and value < 1:
            raise AMNetError(f"{flag} must be >= 1, got {value}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise AMNetError(f"--fps must be > 0, got {args.fps}")
    if args.class_topk is not None and args.class_scores is None:
        raise AMNetError("--class-topk goes with --class-scores")
    if args.class_scores is not None and args.stream:
        raise AMNetError("--class-scores works on files, not with --stream")


# -- main -----------------------------------------------------------------------------------


def detector_options(args: Any) -> dict[str, Any]:
    """The :class:`Detector` settings the command line gives (every mode uses these)."""
    return {
        "device": args.device,
        "min_score": args.min_score,
        "top_k": args.top_k,
        "fps": args.fps,
        "feature_stride": args.feature_stride,
        "num_frames": args.num_frames,
        "intra_op_threads": args.threads,
        "precision": args.precision,
        "runtime": args.runtime,
        "batch_size": args.batch_size,
        "postprocess_workers": args.postprocess_workers,
    }


def _class_scores(args: Any, video_ids: Sequence[str]) -> ClassScores | None:
    """``--class-scores``, read and checked to hold every video, before any inference."""
    if args.class_scores is None:
        return None
    fusion = read_class_scores(args.class_scores)
    missing = [vid for vid in video_ids if not fusion.has(vid)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise AMNetError(
            f"{args.class_scores}: no class scores for {len(missing)} video(s): "
            f"{', '.join(missing[:3])}{more}"
        )
    return fusion


def _output_classes(args: Any, fusion: ClassScores | None, model_classes: list[str]) -> list[str]:
    """The class names the output's labels index: the classifier's with ``--class-scores``
    (which needs a one-class model), else the model's."""
    if fusion is None:
        return model_classes
    if len(model_classes) != 1:
        raise AMNetError(
            f"--class-scores needs a class-agnostic model (one class); {args.engine} has "
            f"{len(model_classes)}"
        )
    return fusion.names


def _class_thresholds(args: Any, class_names: Sequence[str]) -> np.ndarray | None:
    """``--class-thresholds``, read and checked to cover every output class, before any
    inference."""
    if args.class_thresholds is None:
        return None
    return read_class_thresholds(args.class_thresholds, class_names)


def _final(
    args: Any,
    fusion: ClassScores | None,
    thresholds: np.ndarray | None,
    video_id: str,
    dets: Detections,
) -> Detections:
    """A video's output detections: fused with its classes (--class-scores), then cut at the
    class thresholds (--class-thresholds)."""
    if fusion is not None:
        dets = fuse_class_scores(dets, fusion.of(video_id), args.class_topk or DEFAULT_TOPK)
    if thresholds is not None:
        dets = apply_class_thresholds(dets, thresholds)
    return dets


def _refuse_bad(bad: list[tuple[Path, str]], files: list[FeatureFile]) -> None:
    """Without --skip-bad any bad input stops the run before inference."""
    if len(bad) == 1 and len(files) == 1:
        raise AMNetError(bad[0][1])
    raise AMNetError(
        f"{len(bad)} of {len(files)} feature files are bad; nothing was run "
        f"(--skip-bad processes the others):\n{_bad_list(bad)}"
    )


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    _check_options(args)
    if args.describe:
        return _run_describe(args)
    if args.stream:
        return _run_stream(args)
    if args.dim is not None:
        raise AMNetError("--dim goes with --stream (feature files carry their shape)")
    if not args.features:
        raise AMNetError("no FEATURES given (.npy files or folders; or --stream for stdin)")
    if args.workers is None and (args.ray_address or args.resume_from):
        raise AMNetError("--ray-address and --resume-from go with --workers N")
    output: Path | None = None
    files = expand_inputs(args.features)
    if args.resume_from:
        if args.output not in (None, args.resume_from):
            raise AMNetError("--resume-from OUT writes OUT; give no other --output")
        args.output = args.resume_from
    if args.output and args.output != "-":
        # Before any work, and never onto an input: a feature file, the model, the class scores.
        inputs = [f.path for f in files] + [args.engine]
        inputs += [p for p in (args.class_scores, args.class_thresholds) if p is not None]
        output = check_out_path(args.output, inputs, text=True)
    if args.workers is not None:
        return _run_workers(args, files, output)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        from amnet.viz import check_matplotlib

        check_matplotlib()
        check_out_folder(plot_dir, "--plot")  # before any work; made with its first picture

    from amnet.deploy.detector import Detector, VideoError

    start = time.perf_counter()
    # Checking pass: every file is read and validated before any inference. Only the channel
    # count needs the model, so when no file is left to check against it, the run fails before
    # the model is opened.
    cache: dict[str, np.ndarray] = {}
    cached_bytes = 0
    shapes: dict[str, tuple[int, int]] = {}
    bad: list[tuple[Path, str]] = []
    for f in files:
        try:
            array = read_features(f.path, None, mmap=True)
        except AMNetError as exc:
            bad.append((f.path, str(exc)))
            continue
        shapes[f.video_id] = array.shape
        if cached_bytes + array.nbytes <= _CACHE_BYTES:
            cache[f.video_id] = array
            cached_bytes += array.nbytes
    if not shapes:
        if not args.skip_bad:
            _refuse_bad(bad, files)
        raise AMNetError(f"none of the {len(files)} feature files is usable:\n{_bad_list(bad)}")
    fusion = _class_scores(args, [f.video_id for f in files if f.video_id in shapes])
    detector = Detector(args.engine, **detector_options(args))
    try:
        class_names = _output_classes(args, fusion, detector.class_names)
        thresholds = _class_thresholds(args, class_names)
    except AMNetError:
        detector.close()
        raise
    good: list[FeatureFile] = []
    for f in files:
        if f.video_id not in shapes:
            continue
        snippets, channels = shapes[f.video_id]
        if channels != detector.input_dim:
            cache.pop(f.video_id, None)
            bad.append((f.path, channel_mismatch(f.path, channels, detector.input_dim)))
            continue
        if snippets == 0:  # valid and explicit: listed with no detections (DESIGN §6.4)
            logger.warning("%s: no snippets (zero-length video); no detections", f.path)
        good.append(f)
    if bad and not args.skip_bad:
        detector.close()
        order = {f.path: i for i, f in enumerate(files)}
        _refuse_bad(sorted(bad, key=lambda item: order[item[0]]), files)
    if not good:
        detector.close()
        raise AMNetError(f"none of the {len(files)} feature files is usable:\n{_bad_list(bad)}")

    from tqdm import tqdm

    from amnet.console import bar_disabled

    results: dict[str, Detections] = {}
    durations: dict[str, float] = {}
    snippets = 0
    bar = tqdm(
        good,
        desc=PROG,
        unit="video",
        file=sys.stderr,
        disable=args.quiet or len(good) < 2 or bar_disabled(),
        leave=False,
    )
    # Files are read ahead of the backend (fileio.read_ahead: a thread; reading releases the
    # GIL) and fed to the detector as a stream; windows of consecutive videos share backend
    # calls (--batch-size) and --postprocess-workers post-process while the next windows run.
    skipped: set[str] = set()
    sizes: dict[str, int] = {}
    arrays: dict[str, np.ndarray] = {}  # kept for --plot until the video's detections are in

    def read(f: FeatureFile) -> np.ndarray | AMNetError:
        array = cache.pop(f.video_id, None)
        if array is not None:
            return array
        try:
            return read_features(f.path, detector.input_dim, mmap=True)
        except AMNetError as exc:
            return exc

    def stream(todo: list[FeatureFile]) -> Iterator[np.ndarray]:
        for f, array in zip(todo, read_ahead(todo, read), strict=True):
            if isinstance(array, AMNetError):
                if not args.skip_bad:
                    raise array
                bad.append((f.path, str(array)))
                skipped.add(f.video_id)
                array = np.empty((0, detector.input_dim), np.float32)
            durations[f.video_id] = detector.duration_of(array.shape[0])
            sizes[f.video_id] = array.shape[0]
            if plot_dir is not None:
                arrays[f.video_id] = array
            yield array

    # PNGs (--plot) are staged and published after the results: a failure leaves no partial set.
    staged = StagedFiles()
    try:
        todo, finished = good, set()
        while todo:
            try:
                for f, dets in zip(todo, detector.detect_raw_iter(stream(todo)), strict=True):
                    bar.update()
                    finished.add(f.video_id)
                    if f.video_id in skipped:
                        del durations[f.video_id]
                        continue
                    results[f.video_id] = _final(args, fusion, thresholds, f.video_id, dets)
                    if plot_dir is not None:
                        array = arrays.pop(f.video_id)
                        _plot(plot_dir, f.video_id, array, dets, detector, class_names, staged)
                    snippets += sizes[f.video_id]
                todo = []
            except VideoError as exc:  # a file the model cannot answer (its outputs overflow)
                failed = todo[exc.index]
                if not args.skip_bad:
                    raise AMNetError(f"{failed.path}: {exc.reason}") from None
                bad.append((failed.path, f"{failed.path}: {exc.reason}"))
                bar.update()
                finished.add(failed.video_id)
                arrays.clear()
                # The videos after it, and those before it still in flight, run again; those
                # read and found bad meanwhile are listed already.
                todo = [g for g in todo if g.video_id not in finished | skipped]
                for vid in set(durations) - set(results):
                    del durations[vid]
        bar.close()
        if not results:
            raise AMNetError(f"none of the {len(files)} feature files is usable:\n{_bad_list(bad)}")
        text = format_output(args.format, results, durations, class_names)
        if output is not None:
            atomic_write_text(output, text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except BaseException:
        staged.discard()
        detector.close()  # stops the post-processing pool, if one was started
        raise
    staged.publish()
    detector.close()
    seconds = time.perf_counter() - start
    if not args.quiet:
        logger.info(
            "%d video(s), %d snippets in %.2f s with %s on %s%s",
            len(results),
            snippets,
            seconds,
            detector.backend_name,
            detector.device,
            f" -> {output}" if output else "",
        )
    return _exit_status(bad, files)


def _run_workers(args: Any, files: list[FeatureFile], output: Path | None) -> int:
    """``--workers N``: the files on a Ray cluster, shards for resuming, one atomic output."""
    from amnet.deploy import ray_batch

    if args.workers < 1:
        raise AMNetError(f"--workers must be >= 1, got {args.workers}")
    _refuse_options(args, "--workers", "--plot")
    if args.postprocess_workers is not None:
        raise AMNetError(
            "--postprocess-workers does not apply to --workers (each Ray worker post-processes "
            "its own videos)"
        )
    if args.resume_from and output is None:
        raise AMNetError("--resume-from needs a file to write (not stdout)")
    ray_batch.import_ray()  # a missing extra is one line, before any work
    fusion = _class_scores(args, [f.video_id for f in files])
    if output is None:
        return _run_workers_on(args, files, output, fusion)
    # One run per output: two would hand out the same videos, and the first to finish would
    # remove the shards the other still writes.
    busy = f"{output}: another amnet-infer --workers run is writing it; wait for it to finish"
    with exclusive_lock(output.with_name(f".{output.name}.lock"), busy):
        return _run_workers_on(args, files, output, fusion)


def _run_workers_on(
    args: Any, files: list[FeatureFile], output: Path | None, fusion: ClassScores | None
) -> int:
    """The body of :func:`_run_workers`, its options checked (and its output locked)."""
    import shutil

    from tqdm import tqdm

    from amnet.console import bar_disabled
    from amnet.deploy import ray_batch
    from amnet.deploy.detector import Detector

    options = {**detector_options(args), "intra_op_threads": args.threads or 1}
    contract, gpu_run = ray_batch.driver_options(args.engine, options)
    with Detector(args.engine, **contract) as detector:  # the model, checked here once
        on_gpu = gpu_run or detector.device != "cpu"
        class_names = _output_classes(args, fusion, detector.class_names)
        thresholds = _class_thresholds(args, class_names)
        settings = {
            "min_score": args.min_score,
            "top_k": detector.postprocess.max_detections,
            "fps": detector.fps,
            "feature_stride": detector.feature_stride,
            "num_frames": detector.num_frames,
            "precision": args.precision,
            "runtime": args.runtime,
        }
    engine = str(Path(args.engine).resolve())
    # Absolute for the workers (they run elsewhere), but not resolved: a bad file is named as
    # the user gave it, not as the target of its link.
    items = [(str(f.path.absolute()), f.video_id) for f in files]

    results: dict[str, tuple[Detections, float, int]] = {}
    shards: ray_batch.ShardWriter | None = None
    if output is not None:
        folder = ray_batch.parts_dir(output)
        header = ray_batch.shard_header(engine, settings)
        if folder.exists() and not folder.is_dir():
            raise AMNetError(
                f"{folder}: a file of that name is there, where this output keeps its shards; "
                "choose another output name"
            )
        if args.resume_from:
            known = {f.video_id for f in files}
            results = {k: v for k, v in ray_batch.read_shards(folder, header).items() if k in known}
            logger.info("resuming: %d of %d videos done already", len(results), len(files))
        elif folder.exists():
            raise AMNetError(
                f"{folder} holds the shards of an unfinished run: --resume-from {output} "
                "continues it; remove the folder to start over"
            )
        shards = ray_batch.ShardWriter(folder, header)

    pending = [item for item in items if item[1] not in results]
    bad: list[tuple[Path, str]] = []
    bar = tqdm(
        total=len(pending),
        desc=PROG,
        unit="video",
        file=sys.stderr,
        disable=args.quiet or len(pending) < 2 or bar_disabled(),
        leave=False,
    )
    paths = {video_id: Path(path) for path, video_id in items}

    def on_result(video_id: str, result: Any) -> None:
        bar.update(1)
        if isinstance(result, str):
            bad.append((paths[video_id], result))
            return
        dets, duration, snippets = result
        if snippets == 0:
            logger.warning("%s: no snippets (zero-length video); no detections", paths[video_id])
        results[video_id] = result
        if shards is not None:
            shards.add(video_id, dets, duration, snippets)

    start = time.perf_counter()
    try:
        if pending:
            ray_batch.run_on_ray(
                engine, options, pending, args.workers, args.ray_address, on_result, on_gpu
            )
    finally:
        bar.close()
        if shards is not None:
            shards.close()
    parts = ray_batch.parts_dir(output) if output else None
    kept = f"; finished videos are kept in {parts}" if parts and parts.exists() else ""
    if bad and not args.skip_bad:
        raise AMNetError(
            f"{len(bad)} of {len(files)} feature files are bad; no output written{kept} "
            f"(--skip-bad writes the others):\n{_bad_list(bad)}"
        )
    if not results:
        raise AMNetError(f"none of the {len(files)} feature files is usable:\n{_bad_list(bad)}")
    ordered = [f.video_id for f in files if f.video_id in results]
    # Shards keep the model's own detections (a resumed run may fuse and cut them); here both.
    text = format_output(
        args.format,
        {v: _final(args, fusion, thresholds, v, results[v][0]) for v in ordered},
        {v: results[v][1] for v in ordered},
        class_names,
    )
    if output is not None:
        atomic_write_text(output, text)
        shutil.rmtree(ray_batch.parts_dir(output))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not args.quiet:
        logger.info(
            "%d video(s), %d snippets in %.2f s on %d Ray worker(s)%s",
            len(results),
            sum(results[v][2] for v in ordered),
            time.perf_counter() - start,
            args.workers,
            f" -> {output}" if output else "",
        )
    return _exit_status(bad, files)


def _refuse_options(args: Any, mode: str, *flags: str) -> None:
    """A one-line error for the first of ``flags`` given on the command line: it has no
    meaning in ``mode``, and ignoring it would hide a mistake."""
    for flag in flags:
        if getattr(args, flag.removeprefix("--").replace("-", "_")) is not None:
            raise AMNetError(f"{flag} does not apply to {mode}")


def _run_describe(args: Any) -> int:
    """``--describe``: the model opened as a run would open it, :meth:`Detector.describe` as
    JSON on stdout or in ``--output``."""
    if args.features or args.stream or args.workers is not None:
        raise AMNetError("--describe reads the model only; give no FEATURES, --stream or --workers")
    _refuse_options(
        args, "--describe", "--dim", "--plot", "--class-scores", "--class-thresholds",
        "--ray-address", "--resume-from", "--postprocess-workers",
    )  # fmt: skip
    if args.format != "activitynet" or args.skip_bad:
        raise AMNetError("--format and --skip-bad do not apply to --describe (it writes JSON)")
    output = None
    if args.output and args.output != "-":
        output = check_out_path(args.output, [args.engine], text=True)
    from amnet.deploy.detector import Detector

    with Detector(args.engine, **detector_options(args)) as detector:
        text = json.dumps(detector.describe(), indent=2) + "\n"
    if output is not None:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)
    return 0


def _run_stream(args: Any) -> int:
    """``--stream``: raw float32 rows from stdin, JSON lines of final detections to stdout."""
    if args.features:
        raise AMNetError("--stream reads stdin; give no FEATURES files")
    _refuse_options(
        args, "--stream (one live video, JSON lines to stdout)", "--output", "--plot", "--top-k",
        "--postprocess-workers", "--workers", "--ray-address", "--resume-from",
    )  # fmt: skip
    if args.format != "activitynet" or args.skip_bad:
        raise AMNetError("--format and --skip-bad do not apply to --stream")
    if args.dim is None or args.dim < 1:
        raise AMNetError("--stream needs --dim C, the number of float32 values per row")

    from amnet.deploy.detector import Detector

    detector = Detector(args.engine, **detector_options(args))
    if args.dim != detector.input_dim:
        raise AMNetError(f"--dim {args.dim}, but the model expects {detector.input_dim} values")
    thresholds = _class_thresholds(args, detector.class_names)
    stream = detector.stream()
    row_bytes = 4 * args.dim
    # A buffered reader: read1 returns what the pipe holds now instead of waiting for a full block.
    source = cast(io.BufferedReader, sys.stdin.buffer)
    pending = bytearray()
    emitted = 0
    began = time.perf_counter()

    def write(found: list[Any]) -> None:
        nonlocal emitted
        if thresholds is not None:
            found = [d for d in found if d.score >= thresholds[d.label_id]]
        for d in found:
            line = {"label": d.label, "label_id": d.label_id, "segment": [d.start, d.end],
                    "score": d.score}  # fmt: skip
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        emitted += len(found)

    while True:
        data = source.read1(max(row_bytes, 1 << 16))
        if not data:
            break
        pending += data
        rows = len(pending) // row_bytes
        if rows == 0:
            continue
        block = np.frombuffer(bytes(pending[: rows * row_bytes]), dtype="<f4").reshape(rows, -1)
        del pending[: rows * row_bytes]
        first = stream.fed
        write(stream.push(detector.prepare(block, name=f"stdin rows {first}-{first + rows - 1}")))
    if pending:
        raise AMNetError(
            f"stdin ended inside a row: {len(pending)} bytes left over "
            f"(a row is {args.dim} float32 values, {row_bytes} bytes)"
        )
    write(stream.flush())
    if not args.quiet:
        logger.info(
            "stream: %d snippets, %d detections in %.2f s with %s on %s",
            stream.fed,
            emitted,
            time.perf_counter() - began,
            detector.backend_name,
            detector.device,
        )
    return 0


def _plot(
    plot_dir: Path,
    video_id: str,
    features: np.ndarray,
    dets: Detections,
    detector: Any,
    class_names: Sequence[str],
    staged: StagedFiles,
) -> None:
    from amnet import viz

    duration = detector.duration_of(features.shape[0])
    viz.plot_timeline(
        plot_dir / f"{video_id}.png", video_id, dets, class_names, duration,
        staged=staged,
    )  # fmt: skip
    if detector.backend_name == "torch":
        # The mask over the snippets the model sees (resampled for a force_upsampling model).
        profile = viz.ame_profile(
            detector.backend.model,
            detector.model_input(features),
            detector.max_seq_len,
            detector.chunk_overlap,
        )
        if profile is not None:
            stride, frames = detector.timebase(features.shape[0])
            viz.plot_ame(
                plot_dir / f"{video_id}_ame.png",
                video_id,
                profile,
                detector.fps,
                stride,
                frames,
                staged=staged,
            )


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
