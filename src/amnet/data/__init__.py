"""Datasets over ActionFormer-format annotations and per-video ``.npy`` features."""

from amnet.data.dataset import VideoFeatureDataset, collate_videos
from amnet.data.splits import feature_statistics, make_dataset, resolve_data_paths
from amnet.timebase import seconds_to_snippets, snippets_to_seconds

__all__ = [
    "VideoFeatureDataset",
    "collate_videos",
    "feature_statistics",
    "make_dataset",
    "resolve_data_paths",
    "seconds_to_snippets",
    "snippets_to_seconds",
]
