"""TensorRT engine builder: what a CPU can check (profile shapes, argument checks, refusals, the
plan sidecar) always; building and running engines only where TensorRT and a GPU are present.

With ``AMNET_TRT_SUMMARY=path.json`` set (scripts/gpu_check.sh does), the GPU test writes a JSON
summary of the engines it built and their agreement with ONNX Runtime.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from onnx import helper  # noqa: E402

from amnet.errors import AMNetError  # noqa: E402
from amnet.export.to_tensorrt import cuda_device_count, profile_shapes  # noqa: E402
from amnet.metadata import (  # noqa: E402
    plan_sidecar_path,
    read_onnx_metadata,
    read_plan_metadata,
    write_plan_metadata,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def run_script(*args: str, script: str = "export/to_tensorrt.py"):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=ENV,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("to_tensorrt: error: ") and "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model) -> Path:
    """An exported initialised tiny model."""
    return tiny_model["onnx"]


# --- CPU-checkable parts -----------------------------------------------------------------------


def test_profile_defaults_cover_every_chunk():
    shapes = profile_shapes(2048, 2304)
    assert shapes["features"] == ((1, 1, 2048), (1, 2304, 2048), (4, 2304, 2048))
    assert shapes["lengths"] == ((1,), (1,), (4,))


def test_profile_custom_values():
    shapes = profile_shapes(512, 256, min_len=8, opt_len=100, max_len=200, max_batch=8, opt_batch=2)
    assert shapes["features"] == ((1, 8, 512), (2, 100, 512), (8, 200, 512))
    assert shapes["lengths"] == ((1,), (2,), (8,))
    # opt follows an explicit max when not given
    assert profile_shapes(64, 256, max_len=128)["features"][1] == (1, 128, 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_len": 300}, "exceeds the model's max_seq_len 256"),
        ({"min_len": 0}, "--min-len must be an integer >= 1"),
        ({"min_len": 50, "opt_len": 20}, "--min-len <= --opt-len <= --max-len"),
        ({"opt_len": 200, "max_len": 100}, "--min-len <= --opt-len <= --max-len"),
        ({"max_batch": 0}, "--max-batch must be an integer >= 1"),
        ({"max_len": 0}, "--max-len must be an integer >= 1"),  # not its default --opt-len
        ({"max_batch": 2, "opt_batch": 3}, "--opt-batch 3 exceeds --max-batch 2"),
        ({"min_len": True}, "--min-len must be an integer"),
    ],
)
def test_profile_rejects_bad_values(kwargs, message):
    with pytest.raises(AMNetError, match=message.replace("(", r"\(")):
        profile_shapes(2048, 256, **kwargs)


def test_cuda_device_count_agrees_with_torch():
    assert cuda_device_count() == torch.cuda.device_count()


def test_plan_sidecar_round_trip(tiny_onnx, tmp_path):
    meta = read_onnx_metadata(tiny_onnx)
    plan = tmp_path / "model.plan"
    engine = {"precision": "fp16", "max_len": 256}
    path = write_plan_metadata(plan, meta, engine)
    assert path == plan_sidecar_path(plan) == tmp_path / "model.plan.json"
    back = read_plan_metadata(plan)
    assert back.pop("engine") == engine
    assert back == meta
    path.write_text(json.dumps({"engine": {}}))
    with pytest.raises(AMNetError, match="not an AMNet model export"):
        read_plan_metadata(plan)


def test_bad_arguments_are_refused_in_one_line(tiny_onnx, tmp_path):
    out = tmp_path / "m.plan"
    cases = [
        (["--onnx", str(tmp_path / "missing.onnx")], "ONNX model not found"),
        (["--onnx", str(tiny_onnx), "--max-len", "5000"], "exceeds the model's max_seq_len"),
        (["--onnx", str(tiny_onnx), "--min-len", "0"], "--min-len must be"),
        (["--onnx", str(tiny_onnx), "--workspace-gb", "0"], "--workspace-gb must be > 0"),
        (["--onnx", str(tiny_onnx), "--max-batch", "x"], "invalid int value"),
        (["--max-len", "4"], "the following arguments are required: --onnx"),
    ]
    for args, message in cases:
        line = one_line_error(run_script(*args, "--out", str(out)))
        assert message in line, line
    assert not out.exists() and not plan_sidecar_path(out).exists()


def test_incompatible_graph_is_refused_before_tensorrt_is_needed(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    bad = copy.deepcopy(model)
    bad.graph.node.append(helper.make_node("Unique", ["scores"], ["u"], name="injected"))
    path = tmp_path / "bad.onnx"
    onnx.save(bad, str(path))
    out = tmp_path / "bad.plan"
    line = one_line_error(run_script("--onnx", str(path), "--out", str(out)))
    assert "TensorRT 10 cannot import this graph" in line and "Unique" in line
    assert not out.exists()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_refuses_cleanly_without_tensorrt(tiny_onnx, tmp_path):
    out = tmp_path / "m.plan"
    line = one_line_error(run_script("--onnx", str(tiny_onnx), "--out", str(out), "--fp16"))
    assert "TensorRT is not available" in line
    assert not out.exists() and not plan_sidecar_path(out).exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.skipif(not HAVE_TRT or cuda_device_count() > 0, reason="needs TensorRT, no GPU")
def test_refuses_cleanly_without_a_gpu(tiny_onnx, tmp_path):
    line = one_line_error(run_script("--onnx", str(tiny_onnx), "--out", str(tmp_path / "m.plan")))
    assert "no CUDA GPU is visible" in line


# --- on a GPU with TensorRT --------------------------------------------------------------------


def _gpu_ready() -> bool:
    return HAVE_TRT and cuda_device_count() > 0 and torch.cuda.is_available()


@pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT, a CUDA GPU and torch with CUDA")
def test_gpu_engines_match_onnx_runtime(tiny_onnx, tiny_model, tmp_path):
    pytest.importorskip("tensorrt")
    from amnet.deploy import Detector
    from amnet.deploy.backend_onnx import open_session
    from amnet.deploy.backend_tensorrt import TensorRTBackend
    from amnet.export.to_onnx import compare_outputs
    from amnet.export.to_tensorrt import build_engine

    session = open_session(tiny_onnx)
    onnx_detector = Detector(tiny_onnx)
    meta = read_onnx_metadata(tiny_onnx)
    rng = np.random.default_rng(0)
    cases = [[1], [37], [256], [37, 24, 1], [256, 153, 65, 7]]
    # fp16: scores to 5e-2, segments to 2 snippets (a head offset of a few units times a level
    # stride of up to 32 loses a fraction of a snippet to fp16 rounding).
    tolerance = {"fp32": (1e-4, 1e-3), "fp16": (5e-2, 2.0)}
    summary: dict = {"device": torch.cuda.get_device_name(0), "engines": {}}
    failures = []
    import tensorrt

    from amnet.export.to_onnx import export_onnx

    # fp16 engines: from the fp32 graph with TensorRT 10's FP16 builder flag (TensorRT 11
    # refuses --fp16 there), and on both versions from the fp16 graph, strongly typed.
    half_onnx = export_onnx(tiny_model["pt"], tmp_path / "tiny.onnx", fp16=True).fp16_path
    builds = {"fp32": (tiny_onnx, False), "fp16-graph": (half_onnx, False)}
    if hasattr(tensorrt.BuilderFlag, "FP16"):
        builds["fp16"] = (tiny_onnx, True)
    tolerance["fp16-graph"] = tolerance["fp16"]
    summary["precisions"] = list(builds)
    for precision, (graph, flag) in builds.items():
        plan = tmp_path / f"tiny.{precision}.plan"
        start = time.perf_counter()
        out, sidecar = build_engine(graph, plan, fp16=flag, workspace_gb=1)
        assert sidecar == plan_sidecar_path(out) and sidecar.is_file()
        build_s = time.perf_counter() - start
        side = read_plan_metadata(out)
        assert side["engine"]["precision"] == precision.removesuffix("-graph")
        assert side["engine"]["strongly_typed"] == (precision == "fp16-graph")
        assert side["checkpoint_sha256"] == meta["checkpoint_sha256"]
        runner = TensorRTBackend(out)
        rows = []
        for lengths in cases:
            feats = rng.gamma(1.0, 0.15, size=(len(lengths), max(lengths), 2048)).astype(np.float32)
            feeds = {"features": feats, "lengths": np.asarray(lengths, dtype=np.int64)}
            ref = session.run(None, feeds)
            got = runner.run(feeds["features"], feeds["lengths"])
            ds, dg = compare_outputs((ref[0], ref[1]), (got[0], got[1]))
            ok = ds <= tolerance[precision][0] and dg <= tolerance[precision][1]
            rows.append({"lengths": lengths, "scores_diff": ds, "segments_diff": dg, "ok": ok})
            if not ok:
                failures.append((precision, lengths, ds, dg))
        # The chunk policy drives the engine like an ONNX session (a video of 2.3 chunks).
        video = rng.gamma(1.0, 0.15, size=(600, 2048)).astype(np.float32)
        a = onnx_detector.run_chunks(video)
        engine_detector = Detector(out)
        b = engine_detector.run_chunks(video)
        described = engine_detector.describe()
        assert described["precision"] == precision.removesuffix("-graph")
        assert described["checkpoint_sha256"] == meta["checkpoint_sha256"]
        chunk_diff = max(compare_outputs(x[:2], y[:2])[0] for x, y in zip(a, b, strict=True))
        summary["engines"][precision] = {
            "build_seconds": round(build_s, 2),
            "plan_mib": round(out.stat().st_size / 2**20, 2),
            "tensorrt_version": side["engine"]["tensorrt_version"],
            "cases": rows,
            "video_chunks": len(a),
            "video_max_scores_diff": chunk_diff,
        }
    target = os.environ.get("AMNET_TRT_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
    assert not failures, failures


def test_fp16_is_refused_in_one_line_where_tensorrt_has_no_fp16_flag():
    """TensorRT 11 removed the FP16 builder flag (strongly typed networks); TensorRT 10 has it.
    Checked with stand-ins for the two modules' ``BuilderFlag``: TensorRT cannot run here."""
    from types import SimpleNamespace

    from amnet.export.to_tensorrt import _network_flags, check_precision_support

    trt10 = SimpleNamespace(__version__="10.13.0", BuilderFlag=SimpleNamespace(FP16=0, TF32=6))
    trt11 = SimpleNamespace(__version__="11.0.0", BuilderFlag=SimpleNamespace(TF32=6))
    for trt in (trt10, trt11):
        check_precision_support(trt, fp16=False)
    check_precision_support(trt10, fp16=True)
    with pytest.raises(AMNetError, match=r"^--fp16: TensorRT 11\.0\.0 has no FP16 builder flag"):
        check_precision_support(trt11, fp16=True)
    # An fp16 graph builds strongly typed (its types are the precision) on 10 and 11 alike.
    flags = SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    for trt in (trt10, trt11):
        trt.NetworkDefinitionCreationFlag = flags
        assert _network_flags(trt) == 0 and _network_flags(trt, strongly_typed=True) == 1 << 1
    if HAVE_TRT:  # the installed TensorRT: the flag exists exactly where --fp16 is accepted
        import tensorrt

        if hasattr(tensorrt.BuilderFlag, "FP16"):
            check_precision_support(tensorrt, fp16=True)
        else:
            with pytest.raises(AMNetError, match="no FP16 builder flag"):
                check_precision_support(tensorrt, fp16=True)
