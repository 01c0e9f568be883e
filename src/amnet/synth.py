"""A THUMOS14-shaped synthetic dataset: annotation layouts and I3D-like snippet features.

Two halves, kept separate so either can be used alone:

* **Layouts** (which videos, how long, which actions where). Either copied from a real annotation
  file (:func:`layout_from_file`) or drawn from a preset (:func:`draw_layout`):

  - ``thumos14``: the THUMOS14 statistics of DESIGN §7 — a ``validation`` split (training,
    200 videos) and a ``test`` split (212 videos) with THUMOS14's 20 class names and ids;
    log-normal durations, a log-normal action rate (median 9 actions per test video, mean ~16,
    at most 218), class-typical action lengths (log-mean ~1.1–1.16 s, log-std 0.83 overall;
    videos with many actions tend to have short ones), ~30% of the time foreground, one
    class in ~75% of videos, 2–3 otherwise, related classes (the diving pair, the cricket
    pair, athletics) co-occurring.
  - ``tiny``: short videos (96–300 snippets) with the first :data:`TINY_CLASS_COUNT` THUMOS14
    classes (ids 0–4 are both compact and THUMOS14's own ids), 1–6 actions of 2–40 snippets.
    Small enough for CPU tests and demos.

  Drawn actions never overlap (they keep a gap of :data:`MIN_GAP_S`), so snippet-level
  foreground is well defined.

* **Features** (:func:`synthesize_features`), non-negative like real two-stream I3D features:

  - a dataset-wide channel profile (pre-ReLU offset and post-ReLU gain per channel; the first
    half of the channels plays RGB, the second half optical flow, which is sparser and less
    temporally correlated, as in real I3D);
  - background: a static per-video scene offset plus temporally smooth noise (fast
    per-channel noise and slow low-rank drift), passed through a squared ReLU (exact zeros
    and a long right tail);
  - each class has a signature, a sparse non-negative direction with an RGB and a flow part
    (related classes share part of it, so they are confusable); an action adds its signature
    with soft onsets and offsets (the 16-frame snippet window, widened by a random ramp);
  - confusable context: the whole video carries a weak copy of its classes' signatures (the
    sport is visible outside the action), and a run-up before and an aftermath after each
    action carry a partial signature (RGB strongly, flow weakly).

  ``difficulty`` (0 = easy, 1 = default, larger = harder) lowers the signal against the noise
  and raises the context and run-up strength. The noise itself does not depend on it, so
  datasets that differ only in difficulty share their background realisation.

Every draw comes from a generator seeded by ``(seed, purpose, ...)``: layouts by split and
video index, features by a hash of the video id. So the same seed gives byte-identical files,
and generating a subset (``videos=N``) yields exactly the first videos of the full set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from amnet.annotations import (
    VideoAnnotation,
    build_label_map,
    dump_database,
    load_annotations,
    select_subset,
)
from amnet.console import bar_disabled
from amnet.errors import AMNetError
from amnet.fileio import atomic_save_npy, atomic_write_json, exclusive_lock
from amnet.layouts import layout_path

logger = logging.getLogger(__name__)

# The THUMOS14 feature convention (DESIGN §3).
FPS = 30.0
STRIDE = 4
SNIPPET_FRAMES = 16
DEFAULT_DIM = 2048

THUMOS14_CLASSES: tuple[str, ...] = (
    "BaseballPitch",
    "BasketballDunk",
    "Billiards",
    "CleanAndJerk",
    "CliffDiving",
    "CricketBowling",
    "CricketShot",
    "Diving",
    "FrisbeeCatch",
    "GolfSwing",
    "HammerThrow",
    "HighJump",
    "JavelinThrow",
    "LongJump",
    "PoleVault",
    "Shotput",
    "SoccerPenalty",
    "TennisSwing",
    "ThrowDiscus",
    "VolleyballSpiking",
)
TINY_CLASS_COUNT = 5
TINY_CLASSES: tuple[str, ...] = THUMOS14_CLASSES[:TINY_CLASS_COUNT]
PRESETS: tuple[str, ...] = ("thumos14", "tiny")

# Classes that share a sport: they co-occur in multi-class videos and share part of their
# signature (THUMOS14's classic confusions: CliffDiving/Diving, CricketBowling/CricketShot).
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "diving": ("CliffDiving", "Diving"),
    "cricket": ("CricketBowling", "CricketShot"),
    "athletics": (
        "HammerThrow",
        "HighJump",
        "JavelinThrow",
        "LongJump",
        "PoleVault",
        "Shotput",
        "ThrowDiscus",
    ),
}

# Typical log action length (seconds) per THUMOS14 class, measured on the real test split;
# a video shifts its actions' log-lengths by VIDEO_LENGTH_LOG_STD (the same class is filmed at
# different paces), and single actions spread by ACTION_LENGTH_LOG_STD around that.
CLASS_LOG_LENGTH: dict[str, float] = {
    "BaseballPitch": 0.9,
    "BasketballDunk": 0.4,
    "Billiards": 0.6,
    "CleanAndJerk": 2.1,
    "CliffDiving": 1.0,
    "CricketBowling": 0.5,
    "CricketShot": 0.2,
    "Diving": 1.0,
    "FrisbeeCatch": 1.0,
    "GolfSwing": 1.6,
    "HammerThrow": 1.9,
    "HighJump": 1.7,
    "JavelinThrow": 1.8,
    "LongJump": 1.9,
    "PoleVault": 1.8,
    "Shotput": 1.5,
    "SoccerPenalty": 0.9,
    "TennisSwing": 0.5,
    "ThrowDiscus": 1.6,
    "VolleyballSpiking": 0.9,
}
VIDEO_LENGTH_LOG_STD = 0.55
ACTION_LENGTH_LOG_STD = 0.3
# Videos with many actions have short ones (PACE_RATE_CORRELATION between a video's action
# rate and its length offset), which pulls the pooled action log-length below the class
# table's mean; the shift brings it back near DESIGN's 1.16 with ~30% foreground. All of
# these were fitted by drawing thousands of layouts and comparing with DESIGN §7.
CLASS_LENGTH_LOG_SHIFT = 0.3
PACE_RATE_CORRELATION = -0.9
MIN_ACTION_S = 0.2
MIN_GAP_S = 0.4
MAX_ACTIONS = 218

# Random streams (the second element of every seed sequence).
_LAYOUT, _FEATURES, _CHANNELS, _SIGNATURE, _GROUP, _LATENT = range(6)


@dataclass(frozen=True)
class SplitStats:
    """How one drawn split looks: its size and the distributions its videos come from."""

    subset: str
    videos: int
    duration_log_mean: float
    duration_log_std: float
    min_duration: float
    max_duration: float
    rate_log_mean: float  # log of actions per second of video
    rate_log_std: float


THUMOS14_SPLITS: tuple[SplitStats, ...] = (
    SplitStats("validation", 200, 4.94, 0.84, 15.0, 1673.0, -2.92, 0.75),
    SplitStats("test", 212, 5.02, 0.84, 15.0, 1673.0, -2.91, 0.75),
)


@dataclass(frozen=True)
class TinyStats:
    subset: str
    videos: int


TINY_SPLITS: tuple[TinyStats, ...] = (TinyStats("validation", 80), TinyStats("test", 40))
TINY_SNIPPETS = (96, 300)
TINY_ACTIONS = (1, 6)
TINY_ACTION_SNIPPETS = (2.0, 40.0)


# A synthetic video is built in memory: at most 4 GB of float32 features (THUMOS14's longest
# video is about 40k snippets x 2048, 0.3 GB).
MAX_VIDEO_VALUES = 2**30


def num_snippets(duration: float) -> int:
    """Snippets of a video: ``round(duration * fps / stride)`` (Python's round), at least one."""
    return max(1, round(duration * FPS / STRIDE))


def snippet_centres(count: int) -> np.ndarray:
    """Centre time in seconds of each snippet: ``(t * stride + frames / 2) / fps``."""
    return (np.arange(count, dtype=np.float64) * STRIDE + SNIPPET_FRAMES / 2) / FPS


def preset_class_names(preset: str) -> list[str]:
    if preset == "thumos14":
        return list(THUMOS14_CLASSES)
    if preset == "tiny":
        return list(TINY_CLASSES)
    raise AMNetError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")


def preset_splits(preset: str) -> tuple[SplitStats | TinyStats, ...]:
    preset_class_names(preset)  # validates the name
    return THUMOS14_SPLITS if preset == "thumos14" else TINY_SPLITS


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def _choose_classes(rng: np.random.Generator, class_names: Sequence[str]) -> list[int]:
    """The classes of one video, the first uniformly, the others from its sport group if any.

    Asks for two classes in 23% and three in 5% of videos; videos with fewer actions than
    classes lose some, which leaves about 75% single-class videos, as in DESIGN §7.
    """
    wanted = int(rng.choice([1, 2, 3], p=[0.72, 0.23, 0.05]))
    first = int(rng.integers(len(class_names)))
    chosen = [first]
    group = next((g for g in CLASS_GROUPS.values() if class_names[first] in g), ())
    partners = [class_names.index(n) for n in group if n in class_names and n != class_names[first]]
    others = [k for k in range(len(class_names)) if k != first and k not in partners]
    rng.shuffle(partners)
    rng.shuffle(others)
    for k in partners + others:
        if len(chosen) == wanted:
            break
        chosen.append(int(k))
    return chosen


def _place(
    rng: np.random.Generator, lengths: np.ndarray, duration: float, gap_concentration: float
) -> np.ndarray:
    """Lay actions of the given lengths out in ``[0, duration]`` without overlap, random gaps.

    Lengths that do not fit (with :data:`MIN_GAP_S` between actions) are scaled down; actions
    that cannot get :data:`MIN_ACTION_S` even then are dropped from the end.
    """
    n = len(lengths)
    while n > 1 and n * MIN_ACTION_S + (n - 1) * MIN_GAP_S > duration:
        n -= 1
    lengths = np.maximum(lengths[:n], MIN_ACTION_S)
    room = duration - (n - 1) * MIN_GAP_S
    if lengths.sum() > 0.9 * room:
        # Shrink what exceeds the minimum length, so the actions fill at most 90% of the room.
        excess = lengths - MIN_ACTION_S
        target = max(0.9 * room - n * MIN_ACTION_S, 0.0)
        lengths = MIN_ACTION_S + excess * (target / max(excess.sum(), 1e-9))
    free = max(room - lengths.sum(), 0.0)
    # Dirichlet spacings with concentration < 1 make actions come in bursts, as in THUMOS14.
    gaps = rng.dirichlet(np.full(n + 1, gap_concentration)) * free
    gaps[1:n] += MIN_GAP_S
    starts = np.cumsum(gaps[:n]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])
    segments = np.stack([starts, starts + lengths], axis=1)
    # Rounded like the written file so the features match the annotation exactly.
    return np.clip(np.round(segments, 3), 0.0, duration)


def _draw_thumos_video(
    rng: np.random.Generator, stats: SplitStats, class_names: Sequence[str], video_id: str
) -> VideoAnnotation:
    duration = float(np.exp(rng.normal(stats.duration_log_mean, stats.duration_log_std)))
    duration = round(float(np.clip(duration, stats.min_duration, stats.max_duration)), 2)
    classes = _choose_classes(rng, class_names)
    # Action rate and the video's pace are drawn jointly: videos with many actions tend to
    # have short ones, which keeps the foreground share near THUMOS14's 29%.
    rate, pace = rng.standard_normal(2)
    pace = PACE_RATE_CORRELATION * rate + math.sqrt(1 - PACE_RATE_CORRELATION**2) * pace
    n = round(duration * math.exp(stats.rate_log_mean + stats.rate_log_std * rate))
    n = min(max(n, 1), MAX_ACTIONS)
    label_ids = rng.choice(classes, size=n)
    label_ids[: len(classes)] = rng.permutation(classes)[:n]  # every chosen class appears
    log_mean = np.array([CLASS_LOG_LENGTH.get(class_names[k], 1.16) for k in label_ids])
    log_mean += CLASS_LENGTH_LOG_SHIFT + VIDEO_LENGTH_LOG_STD * pace
    lengths = np.maximum(np.exp(rng.normal(log_mean, ACTION_LENGTH_LOG_STD)), MIN_ACTION_S)
    segments = _place(rng, lengths, duration, gap_concentration=0.6)
    label_ids = label_ids[: len(segments)].astype(np.int64)
    return VideoAnnotation(
        video_id=video_id,
        subset=stats.subset,
        duration=duration,
        fps=FPS,
        segments=segments,
        labels=[class_names[k] for k in label_ids],
        label_ids=label_ids,
    )


def _draw_tiny_video(
    rng: np.random.Generator, subset: str, class_names: Sequence[str], video_id: str
) -> VideoAnnotation:
    count = int(rng.integers(TINY_SNIPPETS[0], TINY_SNIPPETS[1] + 1))
    duration = round(count * STRIDE / FPS, 3)
    classes = [int(rng.integers(len(class_names)))]
    if rng.random() < 0.25:
        classes.append(int(rng.choice([k for k in range(len(class_names)) if k != classes[0]])))
    n = int(rng.integers(TINY_ACTIONS[0], TINY_ACTIONS[1] + 1))
    lengths = rng.uniform(*TINY_ACTION_SNIPPETS, size=n) * STRIDE / FPS
    # Drop actions rather than shrink them, so every length stays within the preset's range.
    while n > 1 and lengths[:n].sum() + (n - 1) * MIN_GAP_S > 0.8 * duration:
        n -= 1
    segments = _place(rng, lengths[:n], duration, gap_concentration=1.0)
    label_ids = rng.choice(classes, size=len(segments)).astype(np.int64)
    label_ids[: len(classes)] = rng.permutation(classes)[: len(segments)]
    return VideoAnnotation(
        video_id=video_id,
        subset=subset,
        duration=duration,
        fps=FPS,
        segments=segments,
        labels=[class_names[k] for k in label_ids],
        label_ids=label_ids,
    )


def _check_count(videos: int | None) -> None:
    if videos is not None and videos < 1:
        raise AMNetError(f"the number of videos must be at least 1, got {videos}")


def _check_seed(seed: int) -> None:
    if seed < 0:  # numpy seed sequences take non-negative integers only
        raise AMNetError(f"the seed must be >= 0, got {seed}")


def draw_layout(
    preset: str,
    videos: int | None = None,
    seed: int = 0,
    subsets: Iterable[str] | None = None,
) -> list[VideoAnnotation]:
    """Draw the videos of a preset: ``videos`` per split (default: the preset's split sizes).

    ``subsets`` restricts the splits drawn (case-insensitive). Video ``i`` of a split depends
    only on ``(seed, split, i)``, so a smaller ``videos`` gives a prefix of the larger set.
    """
    class_names = preset_class_names(preset)
    _check_count(videos)
    _check_seed(seed)
    splits = preset_splits(preset)
    wanted = {s.subset for s in splits} if subsets is None else {s.lower() for s in subsets}
    unknown = wanted - {s.subset for s in splits}
    if unknown:
        raise AMNetError(
            f"preset {preset!r} has no subset {sorted(unknown)} "
            f"(subsets: {', '.join(s.subset for s in splits)})"
        )
    layout: list[VideoAnnotation] = []
    for split_index, split in enumerate(splits):  # the index seeds, so skip, don't filter
        if split.subset not in wanted:
            continue
        for i in range(videos if videos is not None else split.videos):
            rng = np.random.default_rng([seed, _LAYOUT, split_index, i])
            video_id = f"video_{split.subset}_{i + 1:07d}"
            if isinstance(split, SplitStats):
                layout.append(_draw_thumos_video(rng, split, class_names, video_id))
            else:
                layout.append(_draw_tiny_video(rng, split.subset, class_names, video_id))
    return layout


def spread_indices(total: int, count: int, phase: int = 0) -> list[int]:
    """``count`` indices evenly spaced over ``range(total)`` (all of them when count >= total),
    the grid shifted by ``phase`` (0 <= phase < total // count)."""
    if count >= total:
        return list(range(total))
    return [(i * total) // count + phase for i in range(count)]


def _spread_ids(ids: list[str], videos: Mapping[str, VideoAnnotation], count: int) -> list[str]:
    """``count`` evenly spaced ids; of the possible grid shifts, the first that covers the most
    classes (a small benchmark set should see every class)."""
    best: list[str] = []
    best_classes = -1
    for phase in range(max(1, len(ids) // max(count, 1))):
        chosen = [ids[i] for i in spread_indices(len(ids), count, phase)]
        classes = len({label for vid in chosen for label in videos[vid].labels})
        if classes > best_classes:
            best, best_classes = chosen, classes
    return best


def layout_from_file(
    path: str | os.PathLike,
    subset: str | Iterable[str] | None = None,
    videos: int | None = None,
    spread: bool = False,
) -> tuple[list[VideoAnnotation], list[str]]:
    """The videos of a real annotation file (of ``subset``; all when ``None``), sorted by id,
    the first ``videos`` of them (``spread``: ``videos`` evenly spaced ids of each subset, so
    a small set still covers the whole layout and its classes); and the class names indexed
    by label id. ``path`` may name a built-in layout (``thumos14``).

    Durations, segments, labels and label ids are copied unchanged; the label map is built on
    the whole file so ids agree between subsets. Labels without ids get sorted-order ids.
    """
    _check_count(videos)
    path = layout_path(path)
    everything = load_annotations(path)
    if not everything:
        raise AMNetError(f"{path}: the annotation file has no videos")
    class_names = build_label_map(everything.values(), path)
    index = {name: i for i, name in enumerate(class_names)}
    chosen = everything if subset is None else select_subset(everything, subset, path)
    ids = sorted(chosen)
    if videos is not None and spread:
        subsets = sorted({chosen[vid].subset.lower() for vid in ids})
        ids = [
            vid
            for name in subsets
            for vid in _spread_ids(
                [v for v in ids if chosen[v].subset.lower() == name], chosen, videos
            )
        ]
    elif videos is not None:
        ids = ids[:videos]
    layout = []
    for vid in ids:
        v = chosen[vid]
        label_ids = np.asarray([index[label] for label in v.labels], dtype=np.int64)
        layout.append(
            VideoAnnotation(
                video_id=v.video_id,
                subset=v.subset,
                duration=v.duration,
                fps=FPS,
                segments=v.segments.copy(),
                labels=list(v.labels),
                label_ids=label_ids,
            )
        )
    outside = sum(int((v.segments[:, 1] > v.duration + 1e-6).sum()) for v in layout)
    if outside:
        logger.warning("%s: %d action(s) end after their video; copied as they are", path, outside)
    return layout, class_names


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difficulty:
    """What the difficulty level turns into (amplitudes in pre-ReLU noise units)."""

    signal_gain: float  # multiplies every signature amplitude
    context: float  # whole-video scene signature, relative to an action
    run_up: float  # run-up/aftermath signature (RGB part), relative to an action

    @classmethod
    def at(cls, level: float) -> Difficulty:
        """Level 0: signal x2, no scene context, faint run-up; 1: x1, context 0.15, run-up
        0.4; 2: x0.67, 0.3, 0.7; the context and run-up stop growing at 0.6 and 0.8."""
        if not math.isfinite(level) or level < 0:
            raise AMNetError(f"difficulty must be a finite number >= 0, got {level}")
        return cls(
            signal_gain=2.0 / (1.0 + level),
            context=min(0.15 * level, 0.6),
            run_up=min(0.1 + 0.3 * level, 0.8),
        )


# Feature-model constants, tuned so that the default level matches the real I3D sample
# (mean ~0.15, std ~0.19, ~8% zeros, lag-1 correlation ~0.74) and leaves a per-snippet
# linear probe on the tiny preset at ~0.93 accuracy (0.95 at level 0, 0.88 at level 2).
_RGB_BASE, _FLOW_BASE, _BASE_SPREAD = 1.9, 1.25, 0.4
_RGB_GAIN, _FLOW_GAIN, _GAIN_LOG_SPREAD = 0.033, 0.035, 0.5
_SCENE_STD = 0.3  # static per-video channel offset
_FAST_STD, _SLOW_STD = 0.85, 0.5  # per-channel temporal noise, fast and slow parts
_RGB_SMOOTH, _FLOW_SMOOTH = 0.75, 0.55  # Gaussian width (snippets) of the fast noise
_SLOW_SMOOTH, _LATENT_RANK = 8.0, 16
_SIGNATURE_DENSITY = 0.1  # share of each half's channels a signature touches
_SIGNATURE_NORM = 9.0  # L2 norm, so separability does not depend on the dimension
_GROUP_SHARE = 0.5  # weight of the shared sport component in a grouped class's signature
_RAMP_FRAMES = (16.0, 32.0)  # onset/offset ramp width: the snippet window, plus up to 16 frames
_RUN_UP_S = (0.5, 2.0)
_INSTANCE_SCALE = (0.75, 1.25)


def _sparse_direction(rng: np.random.Generator, dim: int, rgb: int) -> np.ndarray:
    """A non-negative direction touching a few channels of each half."""
    vec = np.zeros(dim, dtype=np.float64)
    for lo, hi in ((0, rgb), (rgb, dim)):
        if hi <= lo:
            continue
        count = max(1, round(_SIGNATURE_DENSITY * (hi - lo)))
        channels = rng.choice(np.arange(lo, hi), size=count, replace=False)
        vec[channels] = rng.exponential(1.0, size=count) + 0.2
    return vec


@dataclass(frozen=True)
class FeatureWorld:
    """Dataset-level feature parameters, shared by every video of a dataset."""

    dim: int
    rgb_channels: int  # the first rgb_channels play RGB, the rest flow
    base: np.ndarray  # [C] pre-ReLU channel offset
    gain: np.ndarray  # [C] post-ReLU channel scale
    signatures: np.ndarray  # [K, C] non-negative, float32
    latent_basis: np.ndarray  # [R, C] slow drift directions, float32

    @property
    def class_count(self) -> int:
        return len(self.signatures)

    @classmethod
    def create(cls, seed: int, class_names: Sequence[str], dim: int = DEFAULT_DIM) -> FeatureWorld:
        if dim < 1:
            raise AMNetError(f"the feature dimension must be at least 1, got {dim}")
        _check_seed(seed)
        rgb = dim - dim // 2
        rng = np.random.default_rng([seed, _CHANNELS, dim])
        is_rgb = np.arange(dim) < rgb
        base = np.where(is_rgb, _RGB_BASE, _FLOW_BASE) + rng.normal(0.0, _BASE_SPREAD, dim)
        gain = np.where(is_rgb, _RGB_GAIN, _FLOW_GAIN) * np.exp(
            rng.normal(0.0, _GAIN_LOG_SPREAD, dim)
        )
        groups = {}
        for g, name in enumerate(sorted(CLASS_GROUPS)):
            groups[name] = _sparse_direction(
                np.random.default_rng([seed, _GROUP, g, dim]), dim, rgb
            )
        signatures = np.zeros((len(class_names), dim))
        for k, class_name in enumerate(class_names):
            own = _sparse_direction(np.random.default_rng([seed, _SIGNATURE, k, dim]), dim, rgb)
            own /= np.linalg.norm(own)
            group = next((g for g, members in CLASS_GROUPS.items() if class_name in members), None)
            if group is not None:
                own = (1 - _GROUP_SHARE) * own + _GROUP_SHARE * groups[group] / np.linalg.norm(
                    groups[group]
                )
            signatures[k] = own * (_SIGNATURE_NORM / np.linalg.norm(own))
        latent_rng = np.random.default_rng([seed, _LATENT, dim])
        # Each channel gets variance _SLOW_STD**2 from the slow drift.
        latent = latent_rng.normal(0.0, 1.0, (_LATENT_RANK, dim))
        latent *= _SLOW_STD / np.sqrt((latent**2).sum(axis=0, keepdims=True))
        return cls(
            dim=dim,
            rgb_channels=rgb,
            base=base.astype(np.float32),
            gain=gain.astype(np.float32),
            signatures=signatures.astype(np.float32),
            latent_basis=latent.astype(np.float32),
        )


def _gaussian_taps(sigma: float) -> np.ndarray:
    """Smoothing taps normalised to unit energy, so smoothed white noise keeps unit variance."""
    half = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return (taps / np.sqrt((taps**2).sum())).astype(np.float32)


def _smooth_noise(
    rng: np.random.Generator,
    length: int,
    width: int,
    sigma: float,
    std: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``[length, width]`` Gaussian noise of standard deviation ``std``, smoothed over time.

    Written into ``out`` when given (a view into the feature array saves a copy).
    """
    taps = _gaussian_taps(sigma) * np.float32(std)
    white = rng.standard_normal((length + len(taps) - 1, width), dtype=np.float32)
    if out is None:
        out = np.empty((length, width), dtype=np.float32)
    np.multiply(white[:length], taps[0], out=out)
    scratch = np.empty_like(out)
    for i in range(1, len(taps)):  # a loop over the few taps, each step over the whole array
        np.multiply(white[i : i + length], taps[i], out=scratch)
        out += scratch
    return out


def _thin_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a thin ``a`` (a few columns), without BLAS.

    einsum's own loop is single-threaded and fast enough here; a threaded BLAS call on such a
    thin product gains nothing and, on a busy machine, stalls for tens of milliseconds.
    """
    return np.einsum("tk,kc->tc", a, b)


def _coverage(centres: np.ndarray, start: float, end: float, width: float) -> np.ndarray:
    """Share of a ``width``-second window around each centre inside ``[start, end]``.

    This is a linear ramp across each boundary (0.5 at the boundary itself), and a lower
    plateau for actions shorter than the window.
    """
    lo = np.maximum(centres - width / 2, start)
    hi = np.minimum(centres + width / 2, end)
    return np.clip(hi - lo, 0.0, None) / width


def _class_amplitudes(
    video: VideoAnnotation,
    centres: np.ndarray,
    class_count: int,
    knobs: Difficulty,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """How strongly each class's RGB and flow signature parts show at each snippet: ``[T, K]``."""
    count = len(centres)
    rgb = np.zeros((count, class_count), dtype=np.float32)
    flow = np.zeros((count, class_count), dtype=np.float32)
    present = sorted({int(k) for k in video.label_ids if 0 <= k < class_count})
    for k in present:  # the scene shows the sport everywhere, weakly
        rgb[:, k] += knobs.context
        flow[:, k] += knobs.context
    snippet = STRIDE / FPS
    for (start, end), k in zip(video.segments.tolist(), video.label_ids.tolist(), strict=True):
        if not 0 <= k < class_count:
            continue
        width = rng.uniform(*_RAMP_FRAMES) / FPS
        scale = rng.uniform(*_INSTANCE_SCALE)
        run_up, aftermath = rng.uniform(*_RUN_UP_S, size=2)
        reach = width / 2 + max(run_up, aftermath)
        lo = max(0, math.floor((start - reach - SNIPPET_FRAMES / 2 / FPS) / snippet))
        hi = min(count, math.ceil((end + reach) / snippet) + 1)
        if hi <= lo:
            continue
        c = centres[lo:hi]
        action = scale * _coverage(c, start, end, width)
        nearby = knobs.run_up * (
            _coverage(c, start - run_up, start, width) + _coverage(c, end, end + aftermath, width)
        )
        rgb[lo:hi, k] += action + nearby
        flow[lo:hi, k] += action + 0.3 * nearby
    # Actions are not uniform over time: a slow +-15% modulation of every amplitude.
    wobble = 1.0 + _smooth_noise(rng, count, 1, 3.0, 0.15)
    return rgb * wobble, flow * wobble


def synthesize_features(
    video: VideoAnnotation, world: FeatureWorld, difficulty: float, rng: np.random.Generator
) -> np.ndarray:
    """The ``[T, C]`` float32 features of one video, ``T = round(duration * fps / stride)``."""
    knobs = Difficulty.at(difficulty)
    count = num_snippets(video.duration)
    dim, rgb = world.dim, world.rgb_channels

    z = np.empty((count, dim), dtype=np.float32)
    _smooth_noise(rng, count, rgb, _RGB_SMOOTH, _FAST_STD, out=z[:, :rgb])
    if dim > rgb:
        _smooth_noise(rng, count, dim - rgb, _FLOW_SMOOTH, _FAST_STD, out=z[:, rgb:])
    z += _thin_product(
        _smooth_noise(rng, count, _LATENT_RANK, _SLOW_SMOOTH, 1.0), world.latent_basis
    )
    z += world.base + rng.normal(0.0, _SCENE_STD, dim).astype(np.float32)

    amp_rgb, amp_flow = _class_amplitudes(
        video, snippet_centres(count), world.class_count, knobs, rng
    )
    present = np.flatnonzero(amp_rgb.any(axis=0) | amp_flow.any(axis=0))  # a video has 1-3
    if len(present):
        sig_rgb = world.signatures[present].copy()
        sig_rgb[:, rgb:] = 0
        sig_flow = world.signatures[present] - sig_rgb
        amplitudes = np.concatenate([amp_rgb[:, present], amp_flow[:, present]], axis=1)
        amplitudes *= np.float32(knobs.signal_gain)
        z += _thin_product(amplitudes, np.concatenate([sig_rgb, sig_flow], axis=0))

    # A squared ReLU: exact zeros where the channel is off, and the long right tail of real
    # I3D activations (a plain ReLU of Gaussian noise is too symmetric).
    np.maximum(z, 0.0, out=z)
    z *= z
    z *= world.gain
    return z


def video_rng(seed: int, video_id: str) -> np.random.Generator:
    """The feature generator of one video: from the seed and a stable hash of its id."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, _FEATURES, int.from_bytes(digest, "little")])


# --------------------------------------------------------------------------------------------
# Whole datasets
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetSummary:
    videos: int
    snippets: int
    seconds: float
    bytes: int
    foreground: float  # fraction of snippets whose centre lies inside an action

    @property
    def snippets_per_second(self) -> float:
        return self.snippets / self.seconds if self.seconds > 0 else float("inf")


def foreground_mask(video: VideoAnnotation, count: int | None = None) -> np.ndarray:
    """Which snippets have their centre inside an action of the video."""
    centres = snippet_centres(num_snippets(video.duration) if count is None else count)
    inside = np.zeros(len(centres), dtype=bool)
    for start, end in video.segments.tolist():
        inside |= (centres >= start) & (centres <= end)
    return inside


def prepare_output(out: str | os.PathLike) -> Path:
    """Check (before anything is written) that ``out`` can be the dataset folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AMNetError(f"{out}: exists and is not a folder")
    features = out / "features"
    if features.exists() and not features.is_dir():
        raise AMNetError(f"{features}: exists and is not a folder")
    return out


def write_dataset(
    out: str | os.PathLike,
    videos: Sequence[VideoAnnotation],
    class_names: Sequence[str],
    seed: int = 0,
    dim: int = DEFAULT_DIM,
    difficulty: float = 1.0,
    version: str = "amnet-synth",
    progress: bool = True,
) -> DatasetSummary:
    """Write ``out/features/<video_id>.npy`` for every video, then ``out/annotations.json``.

    The annotation file comes last, so a folder with one holds a complete dataset.
    """
    Difficulty.at(difficulty)  # validate before touching the disk
    longest = max(videos, key=lambda v: v.duration, default=None)
    if longest is not None and num_snippets(longest.duration) * dim > MAX_VIDEO_VALUES:
        raise AMNetError(
            f"video {longest.video_id!r}: {longest.duration:g} s is "
            f"{num_snippets(longest.duration)} snippets of {dim} features, more than a synthetic "
            f"video may have ({MAX_VIDEO_VALUES * 4 / 2**30:.0f} GB)"
        )
    world = FeatureWorld.create(seed, class_names, dim)
    out = prepare_output(out)
    features_dir = out / "features"
    new_folders = [folder for folder in (out, features_dir) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AMNetError(f"{out}: cannot create ({exc.strerror})") from None

    began = time.perf_counter()
    snippets = written = inside = 0
    # One writer per dataset folder: two would mix their videos under one annotation file.
    busy = (
        f"{out}: another amnet-synth is writing this dataset; wait for it or choose another --out"
    )
    files: list[Path] = []
    try:
        with exclusive_lock(out / ".amnet-synth.lock", busy):
            try:
                features_dir.mkdir(exist_ok=True)
            except OSError as exc:
                raise AMNetError(f"{features_dir}: cannot create ({exc.strerror})") from None
            bar = tqdm(videos, desc="amnet-synth", unit="video", disable=bar_disabled(progress))
            for video in bar:
                rng = video_rng(seed, video.video_id)
                features = synthesize_features(video, world, difficulty, rng)
                files.append(features_dir / f"{video.video_id}.npy")
                atomic_save_npy(files[-1], features)
                snippets += len(features)
                written += features.nbytes
                inside += int(foreground_mask(video, len(features)).sum())
            database = dump_database(videos, version=version)
            atomic_write_json(out / "annotations.json", database, indent=1)
    except BaseException:
        # A new dataset that did not finish (bad layout, full disk, Ctrl-C) leaves nothing:
        # its folders would otherwise need --overwrite on the next try.
        if features_dir in new_folders:
            for path in files:
                path.unlink(missing_ok=True)
        for folder in reversed(new_folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: never a file this run did not write
        raise
    elapsed = time.perf_counter() - began
    summary = DatasetSummary(
        videos=len(videos),
        snippets=snippets,
        seconds=elapsed,
        bytes=written,
        foreground=inside / max(snippets, 1),
    )
    logger.info(
        "wrote %d videos, %d snippets x %d dims (%.2f GB), %d classes, %.1f%% foreground, "
        "in %.1f s (%.0f snippets/s) to %s",
        summary.videos,
        summary.snippets,
        dim,
        summary.bytes / 1e9,
        len(class_names),
        100 * summary.foreground,
        summary.seconds,
        summary.snippets_per_second,
        out,
    )
    return summary
