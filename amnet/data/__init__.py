"""Datasets over ActionFormer-format annotations and per-video ``.npy`` features."""

from amnet.data.dataset import VideoFeatureDataset, collate_videos
from amnet.timebase import seconds_to_snippets, snippets_to_seconds

__all__ = ["VideoFeatureDataset", "collate_videos", "seconds_to_snippets", "snippets_to_seconds"]
