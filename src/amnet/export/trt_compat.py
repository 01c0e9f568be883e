"""Can TensorRT 10's ONNX parser import this graph? Checked on any machine, without TensorRT.

The check is static: the default-domain opset must lie in the parser's range and every node,
including those inside subgraphs (If/Loop/Scan bodies) and model-local functions (inlined
first), must be an operator of the ONNX-TensorRT support table, kept as data in
``trt_supported_ops.json`` beside this file (its ``source`` field says where it comes from).
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amnet.errors import AMNetError

__all__ = [
    "TRT_OPSET_RANGE",
    "check_opset",
    "check_tensorrt_compatibility",
    "iter_nodes",
    "supported_ops",
]

_TABLE = Path(__file__).with_name("trt_supported_ops.json")


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    with open(_TABLE, encoding="utf-8") as handle:
        return json.load(handle)


def supported_ops() -> frozenset[str]:
    """The ONNX operators (default domain) TensorRT 10's parser imports."""
    return frozenset(_table()["supported"])


TRT_OPSET_RANGE: tuple[int, int] = tuple(_table()["opset_range"])


def check_opset(opset: int) -> str | None:
    """None when TensorRT 10 parses ``opset``, else the reason (one line)."""
    lo, hi = TRT_OPSET_RANGE
    if not lo <= opset <= hi:
        return f"opset {opset} is outside the range TensorRT 10's ONNX parser accepts ({lo}..{hi})"
    return None


def iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and, recursively, of the subgraphs in its nodes' attributes."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def _load(model_or_path: Any) -> Any:
    if hasattr(model_or_path, "graph"):
        return model_or_path
    import onnx

    path = Path(os.fspath(model_or_path))
    if not path.is_file():
        raise AMNetError(f"{path}: ONNX model not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not a model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AMNetError(f"{path}: not a readable ONNX model ({first[:160]})") from None


def check_tensorrt_compatibility(model_or_path: Any) -> list[str]:
    """Problems that would stop TensorRT 10's ONNX parser; an empty list means none found.

    ``model_or_path``: an ``onnx.ModelProto`` or a path. Checks the default-domain opset range,
    operators of other domains, and every operator (subgraphs and local functions included)
    against the support table. Each problem is one line naming the operator, its count and a
    node where it occurs.
    """
    import onnx
    import onnx.inliner

    model = _load(model_or_path)
    problems: list[str] = []
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    default = opsets.get("", opsets.get("ai.onnx"))
    if default is None:
        problems.append("the model imports no default-domain (ai.onnx) opset")
    else:
        reason = check_opset(int(default))
        if reason:
            problems.append(reason)
    if model.functions:
        # Local functions are expanded by the parser too; check what it will actually see.
        model = onnx.inliner.inline_local_functions(model)

    allowed = supported_ops()
    counts: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}
    for node in iter_nodes(model.graph):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        key = (domain, node.op_type)
        if domain == "" and node.op_type in allowed:
            continue
        counts[key] += 1
        example.setdefault(key, node.name or "<unnamed>")
    for (domain, op), count in sorted(counts.items()):
        if domain:
            problems.append(
                f"operator {domain}::{op} ({count} node(s), e.g. {example[(domain, op)]}) is "
                "outside the ONNX domain; TensorRT needs a plugin for it"
            )
        else:
            problems.append(
                f"operator {op} ({count} node(s), e.g. {example[(domain, op)]}) is not in "
                "TensorRT 10's supported ONNX operators"
            )
    return problems
