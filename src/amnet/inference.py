"""Running a PyTorch AMNet over whole videos: chunking, batching and the shared post-processing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from amnet.console import bar_disabled
from amnet.detections import Detections
from amnet.metadata import chunk_batch_for
from amnet.postprocess import (
    PostprocessConfig,
    RawChunk,
    config_from_test_cfg,
    postprocess_chunks,
    run_chunked,
)

if TYPE_CHECKING:
    from amnet.model import AMNet

log = logging.getLogger(__name__)


def postprocess_config(cfg: Mapping[str, Any]) -> PostprocessConfig:
    """The post-processing settings of a full config's ``test_cfg``."""
    return config_from_test_cfg(cfg["test_cfg"])


def predict_chunks(
    model: AMNet,
    feats: np.ndarray,
    max_seq_len: int,
    overlap: float,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> list[RawChunk]:
    """Raw model outputs ``(scores, segments, offset, length)`` for each chunk of one ``[T, C]`` video,
    through the chunk loop every backend uses (:func:`amnet.postprocess.run_chunked`)."""

    @torch.no_grad()
    def run(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, segments = model.predict(
            torch.from_numpy(x).to(device), torch.from_numpy(lengths).to(device)
        )
        return scores.float().cpu().numpy(), segments.float().cpu().numpy()

    if batch_size is None:
        batch_size = chunk_batch_for(torch.device(device).type)
    return run_chunked(run, feats, max_seq_len, overlap, batch_size)


@torch.no_grad()
def actionness(
    model: AMNet, feats: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray | None:
    """The AME's action-aware mask ``m`` (``[T]``, in (0, 1)) over a whole video; None without AME.

    The mask head sits on the convolutional embedding, before any attention, so it is local and
    the whole video goes through in one pass, whatever its length.
    """
    ame = model.ame
    if ame is None:
        return None
    array = np.ascontiguousarray(feats, dtype=np.float32)
    if not array.flags.writeable:  # memory-mapped input: torch warns on read-only memory
        array = array.copy()
    x = torch.from_numpy(array)[None].to(device)
    embedded, mask, _ = model.embed(x, torch.tensor([x.shape[1]], device=x.device))
    logits = ame.actionness(embedded, mask)[:, : x.shape[1]]
    return torch.sigmoid(logits[0]).float().cpu().numpy()


def detect_video(
    model: AMNet,
    feats: np.ndarray,
    cfg: Mapping[str, Any],
    duration: float,
    fps: float | None = None,
    device: torch.device | str = "cpu",
    post: PostprocessConfig | None = None,
    timebase: tuple[float, float] | None = None,
) -> Detections:
    """Detections (seconds) of one video with the config's chunk policy and post-processing.

    ``timebase``: the ``(feature_stride, num_frames)`` of ``feats`` when not the config's (a
    video a dataset resampled, ``dataset.force_upsampling``)."""
    data = cfg["dataset"]
    stride, frames = timebase or (data["feature_stride"], data["num_frames"])
    chunks = predict_chunks(
        model, feats, data["max_seq_len"], cfg["test_cfg"]["chunk_overlap"], device
    )
    return postprocess_chunks(
        chunks,
        duration=duration,
        fps=fps or data["default_fps"],
        feature_stride=stride,
        num_frames=frames,
        cfg=post or postprocess_config(cfg),
    )


def detect_dataset(
    model: AMNet,
    items: Iterable[Mapping[str, Any]],
    cfg: Mapping[str, Any],
    device: torch.device | str = "cpu",
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Detections]:
    """Detections for every item of a dataset (items as produced by VideoFeatureDataset)."""
    model.eval()
    post = postprocess_config(cfg)
    results: dict[str, Detections] = {}
    for item in tqdm(
        items,
        total=total,
        desc="inference",
        unit="video",
        disable=bar_disabled(progress),
        leave=False,
    ):
        feats = item["feats"].numpy() if torch.is_tensor(item["feats"]) else item["feats"]
        results[item["video_id"]] = detect_video(
            model, feats, cfg, item["duration"], item["fps"], device, post,
            (item["feat_stride"], item["num_frames"]),
        )  # fmt: skip
    return results
