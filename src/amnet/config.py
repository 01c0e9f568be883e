"""YAML configs in ActionFormer's shape (dataset, model, opt, loader, train_cfg, test_cfg).

A config file overrides :data:`DEFAULTS`; a top-level ``base: other.yaml`` key first loads
another file (relative to this one), which is how the ablation files stay a few lines long.
Unknown keys are an error naming the key, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from amnet.errors import AMNetError
from amnet.fileio import refuse_special_input
from amnet.model.config import ModelConfig, is_int, is_number

DEFAULTS: dict[str, Any] = {
    "dataset_name": "thumos14",
    "dataset": {
        "annotation_file": None,  # annotations.json; relative paths resolve against --data
        "feature_folder": None,  # folder of <video_id>.npy
        "train_split": ["validation"],
        "val_split": ["test"],
        "num_classes": 20,
        "input_dim": 2048,
        "default_fps": 30.0,
        "feature_stride": 4,
        "num_frames": 16,
        "max_seq_len": 2304,
        # Resample every video to exactly max_seq_len snippets (ActivityNet's fixed-length
        # features): one window per video, its own time base (DESIGN §3).
        "force_upsampling": False,
        "trunc_thresh": 0.5,
        "crop_ratio": [0.9, 1.0],
        "file_prefix": "",  # feature files are <file_prefix><video_id><file_ext>
        "file_ext": ".npy",
    },
    "model": ModelConfig().to_dict(),  # amnet.model.config.ModelConfig: fields and defaults
    "opt": {
        "type": "AdamW",
        "learning_rate": 1.0e-4,
        "weight_decay": 0.05,
        "epochs": 35,
        "warmup_epochs": 5,
    },
    "loader": {"batch_size": 2, "num_workers": 0},
    "train_cfg": {
        "clip_grad_l2norm": 1.0,
        "focal_alpha": 0.25,
        "focal_gamma": 2.0,
        "init_loss_norm": 100.0,
        "loss_norm_momentum": 0.9,
        "reg_loss_weight": 1.0,
        "lambda_mask": 1.0,
        "lambda_ctr": 0.1,
        "ctr_temperature": 0.1,
        "ema_decay": 0.999,
        "amp": True,
        "eval_every": 5,
    },
    "test_cfg": {
        "score_thresh": 0.001,
        "pre_nms_topk": 2000,
        "nms_method": "soft",
        "iou_threshold": 0.1,
        "sigma": 0.5,
        "min_score": 0.001,
        "max_detections": 200,
        "voting_thresh": 0.7,
        "voting_weight": "score",
        "multiclass": True,
        "min_duration": 0.05,
        "chunk_overlap": 0.25,
        "tiou_thresholds": [0.3, 0.4, 0.5, 0.6, 0.7],
    },
}


def merge_config(
    base: Mapping[str, Any], override: Mapping[str, Any], where: str, prefix: str = ""
) -> dict:
    """``base`` updated by ``override``; a key not in ``base`` is an error naming it."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise AMNetError(f"{where}: unknown config key '{dotted}'")
        if isinstance(base[key], Mapping):
            if not isinstance(value, Mapping):
                raise AMNetError(f"{where}: config key '{dotted}' must be a section (mapping)")
            out[key] = merge_config(base[key], value, where, f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice: the plain loader keeps
    the last value silently, so a key pasted twice would change a setting without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *base``: merged keys may be overridden, that is its point
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and on which line, e.g. "key 'lr' given twice, line 4"."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem}, line {mark.line + 1}"
    return str(exc).splitlines()[0]


def _read_yaml(path: Path) -> dict:
    refuse_special_input(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python tags
    except FileNotFoundError:
        raise AMNetError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise AMNetError(f"{path}: is a folder, expected a YAML config") from None
    except yaml.YAMLError as exc:
        raise AMNetError(f"{path}: malformed YAML ({_yaml_problem(exc)})") from None
    except UnicodeDecodeError as exc:
        raise AMNetError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise AMNetError(f"{path}: malformed YAML (nested too deeply)") from None
    except OSError as exc:
        raise AMNetError(f"{path}: cannot read config ({exc.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AMNetError(f"{path}: a config must be a YAML mapping")
    return data


def load_config(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML config over the defaults, following ``base:`` links."""
    path = Path(path).resolve()
    if path in _seen:
        raise AMNetError(f"{path}: 'base' links form a cycle")
    data = _read_yaml(path)
    base_name = data.pop("base", None)
    if base_name is not None:
        base = load_config(path.parent / str(base_name), (*_seen, path))
    else:
        base = DEFAULTS
    cfg = merge_config(base, data, str(path))
    validate_config(cfg, str(path))
    return cfg


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """A full config from a (possibly partial) mapping, e.g. the one stored in a checkpoint."""
    cfg = merge_config(DEFAULTS, data, where)
    validate_config(cfg, where)
    return cfg


OPTIMIZERS = ("adamw",)  # opt.type: the recipe is AdamW; anything else is refused, not ignored


def validate_config(cfg: Mapping[str, Any], where: str) -> None:
    """Types and ranges of every key the package reads; one AMNetError naming the first bad one."""
    model, data = cfg["model"], cfg["dataset"]
    try:
        problems = ModelConfig(**model).problems()
    except TypeError as exc:  # a key the dataclass lacks (cannot happen after merge_config)
        raise AMNetError(f"{where}: bad model section ({exc})") from None
    if problems:
        raise AMNetError(f"{where}: {problems[0]}")
    for key in ("num_classes", "input_dim", "feature_stride", "num_frames", "max_seq_len"):
        if not is_int(data[key]) or data[key] < 1:
            raise AMNetError(f"{where}: dataset.{key} must be an integer >= 1, got {data[key]!r}")
    for key in ("file_prefix", "file_ext"):
        value = data[key]
        if (
            not isinstance(value, str)
            or any(c in value for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in value)
        ):
            raise AMNetError(
                f"{where}: dataset.{key} must be text without path separators or control "
                f"characters, got {value!r}"
            )
    if not isinstance(data["force_upsampling"], bool):
        raise AMNetError(
            f"{where}: dataset.force_upsampling must be true or false, got "
            f"{data['force_upsampling']!r}"
        )
    if not is_number(data["default_fps"]) or data["default_fps"] <= 0:
        raise AMNetError(
            f"{where}: dataset.default_fps must be a finite number > 0, got {data['default_fps']!r}"
        )
    overlap = cfg["test_cfg"]["chunk_overlap"]
    checks = [
        (data["max_seq_len"] % (2 ** (model["n_levels"] - 1)) == 0, "dataset.max_seq_len must be divisible by 2 ** (n_levels - 1)"),
        (is_number(overlap) and 0 <= overlap < 1, f"test_cfg.chunk_overlap must be in [0, 1), got {overlap!r}"),
        (str(cfg["opt"]["type"]).lower() in OPTIMIZERS, f"opt.type must be AdamW (the only optimiser of the recipe), got {cfg['opt']['type']!r}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise AMNetError(f"{where}: {message}")
    _validate_settings(cfg, where)


def _in(
    value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> bool:
    """A finite number (not a bool) in the interval from ``low`` to ``high``."""
    if not is_number(value):
        return False
    return (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high
    )


def _validate_settings(cfg: Mapping[str, Any], where: str) -> None:
    """The data paths and splits, and the ranges of the crop, optimiser, loader, loss and
    evaluation settings: a bad value is refused when the config is read, not found at the
    first validation hours into a run or, worse, trained with (a negative learning rate, an
    EMA decay above 1)."""
    from amnet.postprocess import config_from_test_cfg

    def positive(v: Any) -> bool:
        return _in(v, 0, math.inf, low_open=True)

    def non_negative(v: Any) -> bool:
        return _in(v, 0, math.inf)

    def count(v: Any, least: int) -> bool:
        return is_int(v) and v >= least

    def crop(v: Any) -> bool:
        return v is None or (
            isinstance(v, list) and len(v) == 2
            and all(_in(x, 0, 1, low_open=True) for x in v) and v[0] <= v[1]
        )  # fmt: skip

    def subsets(v: Any) -> bool:  # [] for val_split: train without validation
        names = [v] if isinstance(v, str) else v
        return isinstance(names, list) and all(isinstance(n, str) and n for n in names)

    def path(v: Any) -> bool:  # null: annotations.json / features/ in the --data folder
        return v is None or (isinstance(v, str) and v != "")

    def tious(v: Any) -> bool:
        return (
            isinstance(v, list)
            and len(v) > 0
            and all(_in(t, 0, 1, low_open=True) for t in v)
            and len(set(v)) == len(v)  # one given twice would weigh twice in the average
        )

    rules: list[tuple[str, str, Any, str]] = [
        # (section, key, test, what it must be)
        ("dataset", "annotation_file", path, "null or a file path"),
        ("dataset", "feature_folder", path, "null or a folder path"),
        ("dataset", "train_split", subsets, "a subset name or a list of them"),
        ("dataset", "val_split", subsets, "a subset name or a list of them"),
        ("dataset", "trunc_thresh", lambda v: _in(v, 0, 1), "in [0, 1]"),
        ("dataset", "crop_ratio", crop, "null or [low, high] with 0 < low <= high <= 1"),
        ("opt", "learning_rate", positive, "> 0"),
        ("opt", "weight_decay", non_negative, ">= 0"),
        ("opt", "epochs", lambda v: count(v, 0), "an integer >= 0"),
        ("opt", "warmup_epochs", non_negative, ">= 0"),
        ("loader", "batch_size", lambda v: count(v, 1), "an integer >= 1"),
        ("loader", "num_workers", lambda v: count(v, 0), "an integer >= 0"),
        ("train_cfg", "clip_grad_l2norm", positive, "> 0"),
        # A negative alpha turns the focal loss's class weighting off (the usual convention).
        ("train_cfg", "focal_alpha", lambda v: _in(v, -math.inf, 1), "<= 1 (negative: no weighting)"),
        ("train_cfg", "focal_gamma", non_negative, ">= 0"),
        ("train_cfg", "init_loss_norm", positive, "> 0"),
        ("train_cfg", "loss_norm_momentum", lambda v: _in(v, 0, 1, high_open=True), "in [0, 1)"),
        ("train_cfg", "reg_loss_weight", non_negative, ">= 0"),
        ("train_cfg", "lambda_mask", non_negative, ">= 0"),
        ("train_cfg", "lambda_ctr", non_negative, ">= 0"),
        ("train_cfg", "ctr_temperature", positive, "> 0"),
        ("train_cfg", "ema_decay", lambda v: _in(v, 0, 1, high_open=True), "in [0, 1)"),
        ("train_cfg", "amp", lambda v: isinstance(v, bool), "true or false"),
        ("train_cfg", "eval_every", lambda v: count(v, 0), "an integer >= 0"),
        ("test_cfg", "tiou_thresholds", tious, "a non-empty list of distinct numbers in (0, 1]"),
    ]  # fmt: skip
    for section, key, test, rule in rules:
        value = cfg[section][key]
        if not test(value):
            raise AMNetError(f"{where}: {section}.{key} must be {rule}, got {value!r}")
    name = cfg.get("dataset_name")
    if not (isinstance(name, str) and name and len(name) <= 200):
        # A name only, written into every checkpoint and model: not a structure (a YAML
        # alias tree there expanded to gigabytes when the model's metadata was written).
        shown = repr(name) if isinstance(name, str) else type(name).__name__
        raise AMNetError(f"{where}: dataset_name must be a short non-empty name, got {shown[:60]}")
    try:
        config_from_test_cfg(cfg["test_cfg"])
    except (AMNetError, TypeError, ValueError) as exc:
        raise AMNetError(f"{where}: test_cfg: {exc}") from None
