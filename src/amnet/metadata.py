"""Model metadata carried by an exported graph: ONNX ``metadata_props`` and the TensorRT sidecar.

Everything a runtime needs besides the graph itself (config, class names, the feature convention,
the chunk policy, provenance) travels with the model, so that a ``.onnx`` file or a ``.plan`` +
``.plan.json`` pair is self-describing. ONNX ``metadata_props`` hold strings only, so every value
is stored as text (JSON for structured values) and :func:`decode_metadata` turns them back into
typed values; the TensorRT sidecar stores the same typed dict as JSON.

This module needs neither torch nor numpy; ``onnx`` is imported only to read or write a model
file, and an ONNX Runtime session can be read without it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amnet.errors import AMNetError
from amnet.fileio import publish, read_json, temp_beside, unique_object

__all__ = [
    "METADATA_KEYS",
    "PLAN_SIDECAR_SUFFIX",
    "RUNTIME_KEYS",
    "build_metadata",
    "chunk_batch_for",
    "decode_metadata",
    "encode_metadata",
    "plan_sidecar_path",
    "read_onnx_metadata",
    "read_plan_metadata",
    "validate_metadata",
    "write_onnx_metadata",
    "write_plan_metadata",
]

FORMAT = "amnet-onnx"
# 2 adds force_upsampling. A model without it is still written as 1, so that older runtimes
# keep reading it; one with it is 2, which they refuse instead of chunking it wrongly.
FORMAT_VERSION = 2
# The graph contract every exporter and backend shares (DESIGN §6.1): one chunk in, raw
# per-point outputs out, and how many chunks a backend call takes by default.
INPUT_NAMES: tuple[str, str] = ("features", "lengths")  # [B, T, C] float32, [B] int64
OUTPUT_NAMES: tuple[str, str] = ("scores", "segments")  # [B, P, K] float32, [B, P, 2] float32
DEFAULT_CHUNK_BATCH = 4  # on GPUs; on CPUs see chunk_batch_for


def chunk_batch_for(device: str) -> int:
    """Chunks per backend call by default: 1 on a CPU, where batching chunks buys no speed and
    each extra chunk in a call costs about 0.45 GB of attention scores at the paper's size
    (docs/BENCHMARKS.md, "Memory"); :data:`DEFAULT_CHUNK_BATCH` on a GPU. Every backend and the
    evaluation path use this, so they run the same batches."""
    return 1 if str(device).split(":")[0] == "cpu" else DEFAULT_CHUNK_BATCH


PLAN_SIDECAR_SUFFIX = ".json"

# key -> type of the decoded value. "json" values are stored as JSON text.
_TYPES: dict[str, str] = {
    "format": "str",
    "format_version": "int",
    "config": "json",
    "class_names": "json",
    "fps": "float",
    "feature_stride": "int",
    "num_frames": "int",
    "max_seq_len": "int",
    "chunk_overlap": "float",
    "input_dim": "int",
    "num_classes": "int",
    "pad_multiple": "int",
    "opset": "int",
    "amnet_version": "str",
    "checkpoint_sha256": "str",
    "weights": "str",
}
METADATA_KEYS: tuple[str, ...] = tuple(_TYPES)
# Optional keys: present on some models only (e.g. the INT8 one); kept as text when unknown.
_OPTIONAL: dict[str, str] = {
    "quantization": "str",
    "source_sha256": "str",
    "precision": "str",
    # Videos are resampled to max_seq_len snippets before the graph (absent: False).
    "force_upsampling": "bool",
}


def build_metadata(
    cfg: Mapping[str, Any],
    class_names: list[str],
    *,
    checkpoint_sha256: str,
    opset: int,
    weights: str,
    amnet_version: str,
) -> dict[str, Any]:
    """The typed metadata of a model exported from a full config (``amnet.config`` shape)."""
    data, model = cfg["dataset"], cfg["model"]
    if len(class_names) != data["num_classes"]:
        raise AMNetError(
            f"{len(class_names)} class names for {data['num_classes']} classes in the config"
        )
    resampled = bool(data.get("force_upsampling", False))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if resampled else 1,
        "config": json.loads(json.dumps(cfg)),  # a plain, JSON-safe copy
        "class_names": [str(n) for n in class_names],
        "fps": float(data["default_fps"]),
        "feature_stride": int(data["feature_stride"]),
        "num_frames": int(data["num_frames"]),
        "max_seq_len": int(data["max_seq_len"]),
        "chunk_overlap": float(cfg["test_cfg"]["chunk_overlap"]),
        "input_dim": int(data["input_dim"]),
        "num_classes": int(data["num_classes"]),
        "pad_multiple": 2 ** (int(model["n_levels"]) - 1),
        "opset": int(opset),
        "amnet_version": str(amnet_version),
        "checkpoint_sha256": str(checkpoint_sha256),
        "weights": str(weights),
    }
    if resampled:
        meta["force_upsampling"] = True
    return meta


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """Typed metadata -> the string map stored in ``metadata_props``."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        kind = _TYPES.get(key) or _OPTIONAL.get(key, "str")
        out[key] = json.dumps(value) if kind == "json" else str(value)
    return out


def decode_metadata(props: Mapping[str, Any], where: str = "model") -> dict[str, Any]:
    """The string map of ``metadata_props`` (or an already typed dict) -> typed metadata.

    Raises AMNetError naming ``where`` when the model is not an AMNet export or a value is bad.
    """
    missing = [k for k in METADATA_KEYS if k not in props]
    if "format" in missing or "config" in missing:
        raise AMNetError(f"{where}: not an AMNet model export (no AMNet metadata)")
    if missing:
        raise AMNetError(f"{where}: AMNet metadata lacks {', '.join(missing)}")
    if str(props["format"]) != FORMAT:
        raise AMNetError(f"{where}: metadata format {props['format']!r}, expected {FORMAT!r}")
    out: dict[str, Any] = {}
    for key, raw in props.items():
        kind = _TYPES.get(key) or _OPTIONAL.get(key, "str")
        try:
            out[key] = _decode_value(kind, raw)
        except (TypeError, ValueError) as exc:
            raise AMNetError(f"{where}: bad metadata value for '{key}' ({exc})") from None
    return validate_metadata(out, where)


def _decode_value(kind: str, raw: Any) -> Any:
    """One stored value -> its typed value; text (ONNX) and typed JSON (sidecar) alike, with no
    silent coercion (``int(2.7)`` or ``float(True)`` would hide a damaged file)."""
    if kind == "json":
        return json.loads(raw, object_pairs_hook=unique_object) if isinstance(raw, str) else raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if raw in ("True", "False"):  # as encode_metadata writes it
            return raw == "True"
        raise TypeError(f"expected True or False, got {raw!r}")
    if kind == "str":
        if not isinstance(raw, str):
            raise TypeError(f"expected text, got {type(raw).__name__}")
        return raw
    if isinstance(raw, bool):
        raise TypeError("expected a number, got a boolean")
    if kind == "int":
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            return int(raw.strip())
        raise TypeError(f"expected an integer, got {raw!r}")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        return float(raw.strip())
    raise TypeError(f"expected a number, got {raw!r}")


# What every backend's metadata must hold: the runtime reads nothing else.
RUNTIME_KEYS: tuple[str, ...] = (
    "config",
    "class_names",
    "fps",
    "feature_stride",
    "num_frames",
    "max_seq_len",
    "chunk_overlap",
    "input_dim",
    "num_classes",
)
# Integer fields and their lower bounds.
_MIN_INT = {
    "feature_stride": 1,
    "num_frames": 1,
    "max_seq_len": 1,
    "input_dim": 1,
    "num_classes": 1,
    "pad_multiple": 1,
    "opset": 0,  # 0: not an ONNX graph (the metadata of a checkpoint)
}


def validate_metadata(meta: Mapping[str, Any], where: str = "model") -> dict[str, Any]:
    """Typed metadata checked for what the runtime relies on; a copy, or one AMNetError that
    names ``where`` and the field.

    Every backend runs this once at load (the ONNX metadata, the TensorRT sidecar and the
    metadata derived from a checkpoint), so a damaged or hand-edited model fails there and not
    halfway through a video with a division by zero or a silently wrong time axis.
    """

    def bad(key: str, why: str) -> AMNetError:
        shown = repr(meta.get(key))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return AMNetError(f"{where}: metadata field '{key}' {why}, got {shown}")

    missing = [k for k in RUNTIME_KEYS if k not in meta]
    if missing:
        raise AMNetError(f"{where}: model metadata lacks {', '.join(missing)}")

    version = meta.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad("format_version", "must be an integer >= 1")
    if version > FORMAT_VERSION:
        raise AMNetError(
            f"{where}: metadata format_version {version} is newer than this package reads "
            f"({FORMAT_VERSION})"
        )
    for key, low in _MIN_INT.items():
        if key not in meta:
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(key, f"must be an integer >= {low}")
    fps = meta.get("fps")
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise bad("fps", "must be a finite number > 0")
    overlap = meta.get("chunk_overlap")
    if (
        isinstance(overlap, bool)
        or not isinstance(overlap, (int, float))
        or not 0 <= overlap < 1  # NaN fails this too
    ):
        raise bad("chunk_overlap", "must be a number in [0, 1)")
    if not isinstance(meta.get("force_upsampling", False), bool):
        raise bad("force_upsampling", "must be true or false")
    pad = meta.get("pad_multiple", 1)
    if pad & (pad - 1):
        raise bad("pad_multiple", "must be a power of two")
    if meta["max_seq_len"] % pad:
        raise bad("max_seq_len", f"must be a multiple of pad_multiple {pad}")
    if not isinstance(meta.get("config"), dict):
        raise bad("config", "must be a JSON object")
    test_cfg = meta["config"].get("test_cfg", {})
    if not isinstance(test_cfg, dict):
        raise AMNetError(f"{where}: metadata field 'config.test_cfg' must be a JSON object")
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise AMNetError(f"{where}: metadata field 'class_names' must be a list of non-empty names")
    if len(names) != meta["num_classes"]:
        raise AMNetError(
            f"{where}: metadata has {len(names)} class names for num_classes {meta['num_classes']}"
        )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AMNetError(f"{where}: metadata field 'class_names' lists {dup!r} twice")
    return dict(meta)


def write_onnx_metadata(model: Any, meta: Mapping[str, Any]) -> None:
    """Set ``meta`` (typed) in an ``onnx.ModelProto``'s ``metadata_props``, replacing same keys."""
    encoded = encode_metadata(meta)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in encoded]
    del model.metadata_props[:]
    for key, value in [*kept, *encoded.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_metadata(source: str | os.PathLike | Any, where: str | None = None) -> dict[str, Any]:
    """Typed AMNet metadata of an ONNX model.

    ``source``: a path to a ``.onnx`` file, an ``onnx.ModelProto`` or an
    ``onnxruntime.InferenceSession`` (read through ``get_modelmeta``, without ``onnx``).
    ``where`` names the model in errors (default: the path, or "session"/"model").
    Raises AMNetError (one line) when the file is missing, unreadable or not an AMNet export.
    """
    if hasattr(source, "get_modelmeta"):
        props = dict(source.get_modelmeta().custom_metadata_map)
        return decode_metadata(props, where or "session")
    if hasattr(source, "metadata_props"):
        return decode_metadata({p.key: p.value for p in source.metadata_props}, where or "model")
    path = Path(source)
    if not path.is_file():
        raise AMNetError(f"{path}: ONNX model not found")
    import onnx  # only needed for files; kept local so a runtime without it can read sessions

    try:
        # Weights stored as external data are not needed to read the metadata.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError; any failure means unreadable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AMNetError(f"{path}: not a readable ONNX model ({first[:160]})") from None
    return decode_metadata({p.key: p.value for p in model.metadata_props}, where or str(path))


def plan_sidecar_path(plan_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + PLAN_SIDECAR_SUFFIX)


def write_plan_metadata(
    plan_path: str | os.PathLike, meta: Mapping[str, Any], engine: Mapping[str, Any]
) -> Path:
    """Write ``<plan>.json`` atomically: the typed ONNX metadata plus ``engine`` build settings."""
    path = plan_sidecar_path(plan_path)
    text = json.dumps({**dict(meta), "engine": dict(engine)}, indent=2) + "\n"
    tmp = temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_plan_metadata(plan_path: str | os.PathLike) -> dict[str, Any]:
    """Typed metadata of a TensorRT plan from its sidecar (``engine`` holds the build settings)."""
    path = plan_sidecar_path(plan_path)
    data = read_json(path, "TensorRT plan metadata (.plan.json)")
    if not isinstance(data, dict):
        raise AMNetError(f"{path}: expected a JSON object")
    engine = data.pop("engine", None)
    meta = decode_metadata(data, str(path))
    if not isinstance(engine, dict):
        raise AMNetError(f"{path}: no 'engine' section")
    meta["engine"] = engine
    return meta
