"""The video feature dataset: one ``[T, C]`` ``.npy`` per video plus an annotation file.

Time conventions (DESIGN §3): snippet ``t`` is centred at ``(t * stride + num_frames / 2) / fps``
seconds; ground-truth segments are converted to snippet units with the inverse of that map.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from amnet.annotations import VideoAnnotation, build_label_map, load_annotations, select_subset
from amnet.class_scores import AGNOSTIC_CLASS
from amnet.console import bar_disabled
from amnet.errors import AMNetError
from amnet.fileio import load_features, refuse_special_input
from amnet.timebase import (
    resample_snippets,
    resampled_timebase,
    seconds_to_snippets,
    snippets_to_seconds,
)

log = logging.getLogger(__name__)


def truncate_video(
    feats: np.ndarray,
    segments: np.ndarray,
    labels: np.ndarray,
    max_len: int,
    trunc_thresh: float,
    rng: np.random.Generator,
    crop_ratio: Sequence[float] | None = None,
    trials: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A random training window of at most ``max_len`` snippets.

    Actions that keep at least ``trunc_thresh`` of their length inside the window stay (clipped
    to it); the rest are dropped. Windows with at least one action are preferred. Returns the
    cropped features, segments, labels and the window start.
    """
    length = feats.shape[0]
    if length <= max_len:
        if crop_ratio is None or length < 2:
            return feats, segments, labels, 0
        lo = max(1, round(crop_ratio[0] * length))
        hi = min(length, round(crop_ratio[1] * length))
        max_len = int(rng.integers(lo, hi + 1))
        if max_len >= length:
            return feats, segments, labels, 0
    area = np.maximum(segments[:, 1] - segments[:, 0], 1e-6)
    for _ in range(max(trials, 1)):  # the last window drawn when none holds an action
        start = int(rng.integers(0, length - max_len + 1))
        end = start + max_len
        inter = np.clip(
            np.minimum(segments[:, 1], end) - np.maximum(segments[:, 0], start), 0, None
        )
        keep = inter / area >= trunc_thresh
        if keep.any() or len(segments) == 0:
            break
    window = np.clip(segments[keep], start, start + max_len) - start
    return feats[start : start + max_len], window, labels[keep], start


def _feature_problem(path: Path, input_dim: int) -> str | int:
    """What is wrong with one feature file, or (a good one) its number of snippets.
    Memory-mapped and scanned in blocks, so a long video costs no more memory than one block."""
    if not path.is_file():
        return "a folder" if path.is_dir() else "not a regular file"
    try:
        refuse_special_input(path)
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except AMNetError:
        return "not a regular file"
    except Exception as exc:  # any unreadable file is reported with its name
        return f"unreadable: {type(exc).__name__}"
    if array.ndim != 2 or array.shape[1] != input_dim or array.dtype.kind != "f":
        return f"shape {list(array.shape)}, dtype {array.dtype}; expected [T, {input_dim}] float"
    if array.shape[0] == 0:
        return "no snippets (zero-length video)"
    block = max(1, (1 << 22) // max(1, input_dim))  # ~4M values per block
    for start in range(0, array.shape[0], block):
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf: reported
            chunk = np.asarray(array[start : start + block], dtype=np.float32)
        if not np.isfinite(chunk).all():
            return f"NaN or Inf at snippet {start + int(np.argwhere(~np.isfinite(chunk))[0, 0])}"
    return int(array.shape[0])


class VideoFeatureDataset(Dataset):
    """Videos of some subsets of an annotation file with their features.

    With ``force_upsampling`` every video's features are resampled to ``max_seq_len`` snippets
    (:func:`~amnet.timebase.resample_snippets`) and its items carry their own
    ``feat_stride``/``num_frames`` (:func:`~amnet.timebase.resampled_timebase`).

    With ``class_agnostic`` (or one class name given), every action is of the one class:
    :data:`~amnet.class_scores.AGNOSTIC_CLASS` when the file has several.

    Each item is a dict: ``video_id``, ``feats`` (float32 tensor ``[T, C]``), ``segments``
    (float32 ``[N, 2]`` in snippet units of the item, after any crop), ``labels`` (int64 ``[N]``),
    ``fps``, ``duration``, ``feat_stride``, ``num_frames`` and ``offset`` (crop start).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        feature_folder: str | os.PathLike,
        subsets: str | Sequence[str],
        *,
        is_training: bool,
        input_dim: int,
        max_seq_len: int,
        feature_stride: int = 4,
        num_frames: int = 16,
        default_fps: float = 30.0,
        trunc_thresh: float = 0.5,
        crop_ratio: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        file_ext: str = ".npy",
        file_prefix: str = "",
        seed: int = 0,
        class_agnostic: bool = False,
        force_upsampling: bool = False,
    ) -> None:
        all_videos = load_annotations(annotation_file)
        if class_names is not None:
            self.class_names = list(class_names)
        else:
            self.class_names = build_label_map(all_videos.values(), annotation_file)
            if class_agnostic and len(self.class_names) != 1:
                self.class_names = [AGNOSTIC_CLASS]
        self.videos: list[VideoAnnotation] = sorted(
            select_subset(all_videos, subsets, annotation_file).values(), key=lambda v: v.video_id
        )
        self.annotation_file = Path(annotation_file)
        self.feature_folder = Path(feature_folder)
        self.is_training = is_training
        self.input_dim = input_dim
        self.max_seq_len = max_seq_len
        self.feature_stride = feature_stride
        self.num_frames = num_frames
        self.default_fps = default_fps
        self.trunc_thresh = trunc_thresh
        self.crop_ratio = crop_ratio
        self.file_ext = file_ext
        self.file_prefix = file_prefix
        self.force_upsampling = force_upsampling
        self.rng = np.random.default_rng(seed)
        self._check_labels(annotation_file)
        self._check_segments(self._check_files())

    def _check_labels(self, path: str | os.PathLike) -> None:
        if len(self.class_names) == 1:
            # One class: a class-agnostic localizer, every action is of that class (labels
            # keep their names for an evaluation with video-level class scores).
            for v in self.videos:
                v.label_ids = np.zeros(len(v.labels), dtype=np.int64)
            return
        known = set(self.class_names)
        unknown = sorted({lab for v in self.videos for lab in v.labels} - known)
        if unknown:
            raise AMNetError(
                f"{path}: labels {unknown[:5]} are not among the model's {len(known)} classes"
            )
        index = {name: i for i, name in enumerate(self.class_names)}
        for v in self.videos:
            v.label_ids = np.asarray([index[lab] for lab in v.labels], dtype=np.int64)

    def feature_path(self, video_id: str) -> Path:
        return self.feature_folder / f"{self.file_prefix}{video_id}{self.file_ext}"

    def _check_files(self) -> dict[str, int]:
        """Fail early, naming the files, rather than mid-epoch: every feature file is read once
        and must be a non-empty ``[T, input_dim]`` float array of finite values. Returns each
        video's number of snippets."""
        missing = [
            str(self.feature_path(v.video_id))
            for v in self.videos
            if not os.path.lexists(self.feature_path(v.video_id))
        ]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise AMNetError(
                f"{len(missing)} feature file(s) missing: {', '.join(missing[:3])}{more}"
            )
        bad = []
        lengths: dict[str, int] = {}
        videos = tqdm(
            self.videos, desc="checking features", unit="video", leave=False,
            disable=bar_disabled() or len(self.videos) < 50,
        )  # fmt: skip
        for v in videos:
            found = _feature_problem(self.feature_path(v.video_id), self.input_dim)
            if isinstance(found, str):
                bad.append(f"{self.feature_path(v.video_id)} ({found})")
            else:
                lengths[v.video_id] = found
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise AMNetError(f"{len(bad)} bad feature file(s): {'; '.join(bad[:3])}{more}")
        return lengths

    def _timebase(self, video: VideoAnnotation, num_snippets: int) -> tuple[float, float, float]:
        """(fps, feature stride, frames per snippet) of ``video`` as the model sees it."""
        fps = video.fps or self.default_fps
        stride: float = self.feature_stride
        frames: float = self.num_frames
        if self.force_upsampling:  # every video becomes max_seq_len snippets
            stride, frames = resampled_timebase(num_snippets, stride, frames, self.max_seq_len)
        return fps, stride, frames

    def _check_segments(self, lengths: dict[str, int]) -> None:
        """Annotations that lie wholly outside their video's features (a wrong fps or stride,
        features of another video) can be neither learnt nor found, and nothing else would say
        so: a warning with their count. A training split whose annotations all lie outside is
        an error: it would train on background only."""
        outside = total = 0
        first = ""
        for video in self.videos:
            if not len(video.segments):
                continue
            length = lengths[video.video_id]
            fps, stride, frames = self._timebase(video, length)
            if self.force_upsampling:
                length = self.max_seq_len
            seg = seconds_to_snippets(video.segments, fps, stride, frames)
            gone = np.minimum(seg[:, 1], length) <= np.maximum(seg[:, 0], 0.0)
            total += len(seg)
            outside += int(gone.sum())
            if gone.any() and not first:
                start, end = video.segments[int(np.argmax(gone))]
                ends = float(snippets_to_seconds(np.float64(length), fps, stride, frames))
                first = (
                    f"video {video.video_id!r} [{start:g}, {end:g}] s, its features end at "
                    f"{ends:.1f} s"
                )
        if not outside:
            return
        message = (
            f"{self.annotation_file}: {outside} of the {total} annotations of this split lie "
            f"wholly outside their videos' features (first: {first}); check fps, "
            "feature_stride, num_frames and the feature files"
        )
        if self.is_training and outside == total:
            raise AMNetError(message)
        log.warning("%s; they can be neither learnt nor found", message)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]
        feats = load_features(self.feature_path(video.video_id), self.input_dim)
        fps, stride, frames = self._timebase(video, feats.shape[0])
        if self.force_upsampling:  # every video becomes max_seq_len snippets
            feats = resample_snippets(feats, self.max_seq_len)
        segments = seconds_to_snippets(video.segments, fps, stride, frames)
        segments = np.clip(segments, 0, feats.shape[0])
        labels = video.label_ids
        offset = 0
        if self.is_training:
            feats, segments, labels, offset = truncate_video(
                feats,
                segments,
                labels,
                self.max_seq_len,
                self.trunc_thresh,
                self.rng,
                self.crop_ratio,
            )
        return {
            "video_id": video.video_id,
            "feats": torch.from_numpy(np.ascontiguousarray(feats)),
            "segments": torch.as_tensor(segments, dtype=torch.float32).reshape(-1, 2),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "fps": fps,
            "duration": video.duration,
            "feat_stride": stride,
            "num_frames": frames,
            "offset": offset,
        }


def collate_videos(
    items: list[dict[str, Any]], pad_multiple: int = 1, pad_to: int | None = None
) -> dict[str, Any]:
    """Pad a list of items to one ``[B, T, C]`` batch with valid ``lengths`` and ``mask``.

    ``T`` is the longest item (or ``pad_to``) rounded up to ``pad_multiple`` so every pyramid
    level divides evenly. Per-video fields stay lists.
    """
    lengths = torch.tensor([it["feats"].shape[0] for it in items], dtype=torch.int64)
    longest = int(lengths.max()) if pad_to is None else max(pad_to, int(lengths.max()))
    padded = max(pad_multiple, -(-longest // pad_multiple) * pad_multiple)
    channels = items[0]["feats"].shape[1]
    feats = items[0]["feats"].new_zeros(len(items), padded, channels)
    for i, it in enumerate(items):
        feats[i, : it["feats"].shape[0]] = it["feats"]
    batch: dict[str, Any] = {key: [it[key] for it in items] for key in items[0] if key != "feats"}
    batch["feats"] = feats
    batch["lengths"] = lengths
    batch["mask"] = torch.arange(padded)[None, :] < lengths[:, None]
    return batch
