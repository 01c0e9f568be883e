"""``amnet-serve``: a real Ray Serve server on 127.0.0.1, spoken to with a real HTTP client.

One server (the tiny trained model of conftest, batches of up to 4, a 1 MiB body limit) serves
the whole module; it is started as users start it, from the console script.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from videos import DIM, video

from amnet.deploy import Detector

# Each Ray test starts a local cluster: run them on one pytest worker, one after another.
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.usefixtures("ray_serve")]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)  # an object array is pickled (np.save allows it by default)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(
        self, path: str, body: bytes | None = None, content_type: str | None = None,
        method: str | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def detect(self, array: np.ndarray, query: str = "") -> tuple[int, dict]:
        status, body = self.request(f"/v1/detect{query}", npy(array), "application/octet-stream")
        return status, json.loads(body)


def serve_command(model: Path, port: int, *extra: str) -> list[str]:
    """``amnet-serve`` as users start it: the console script next to this interpreter."""
    script = shutil.which("amnet-serve", path=str(Path(sys.executable).parent))
    assert script, "amnet-serve is not installed next to this interpreter"
    return [script, "--engine", str(model), "--port", str(port), *extra, "-q"]


def wait_ready(proc: subprocess.Popen, client: Client, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read()
            err = err.decode() if isinstance(err, bytes) else err
            pytest.fail(f"amnet-serve exited: {err[-2000:]}")
        try:
            if client.request("/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"amnet-serve was not ready within {seconds:.0f} s")


@pytest.fixture(scope="module")
def server(models):
    port = free_port()
    command = serve_command(
        models["onnx"], port, "--max-batch", "4", "--batch-wait-ms", "50", "--max-body-mb", "1",
        "--body-timeout-s", "1.5",
    )  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_ready(proc, Client(port))
        yield Client(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # -q, from start to stop: nothing from Ray or Serve either (their notices, INFO lines).
    assert proc.returncode == 0 and proc.stderr.read() == b"", proc.returncode


def raw_request(port: int, head: bytes, timeout: float = 30) -> tuple[bytes, float]:
    """Send ``head`` (request line, headers and part of a body) and wait: the status line of
    the answer and the seconds it took."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(head)
        conn.settimeout(timeout)
        answer = conn.recv(200)
    return answer.split(b"\r\n")[0], time.monotonic() - began


def test_stalled_or_oversized_uploads_do_not_hold_the_service(server):
    """A client that stops sending its body would hold a replica's request slot for ever (a
    few of them, every slot: /healthz too); it gets 408 after --body-timeout-s of silence. A
    body declared far over the limit is refused at once, not after it arrived."""
    port = int(server.base.rsplit(":", 1)[1])
    head = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    status, seconds = raw_request(port, head + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
    assert status == b"HTTP/1.1 408 Request Timeout" and 1.4 < seconds < 20, (status, seconds)
    status, seconds = raw_request(port, head + b"Content-Length: 1000000000\r\n\r\n" + b"x" * 10)
    assert status == b"HTTP/1.1 413 Request Entity Too Large" and seconds < 1.4, (status, seconds)
    assert server.detect(video(30, seed=2))[0] == 200


def assert_answer(detections: list[dict], detector: Detector, features, **kwargs) -> None:
    """The service's answer is the Python API's: same labels in the same order, same numbers."""
    want = detector(features, **kwargs)
    assert [(d["label_id"], d["label"]) for d in detections] == [
        (d.label_id, d.label) for d in want
    ]
    got = np.array([[*d["segment"], d["score"]] for d in detections]).reshape(-1, 3)
    ref = np.array([[d.start, d.end, d.score] for d in want]).reshape(-1, 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_health_and_model(server, onnx_detector):
    assert server.request("/healthz") == (200, b"ok")
    status, body = server.request("/v1/model")
    info = json.loads(body)
    assert status == 200
    assert info["class_names"] == onnx_detector.class_names
    assert info["input_dim"] == DIM and info["fps"] == onnx_detector.fps
    assert info["max_seq_len"] == onnx_detector.max_seq_len
    assert info["max_body_bytes"] == 1 << 20
    # The model as amnet-infer --describe gives it: provenance included.
    assert info == {**onnx_detector.describe(), "max_body_bytes": 1 << 20}
    assert info["checkpoint_sha256"] and info["weights"] in ("ema", "model")


def test_detect_npy_and_json_match_the_python_api(server, onnx_detector):
    features = video(90, seed=1)  # 90 x 2048 float32 = 720 KiB, under the 1 MiB limit
    status, answer = server.detect(features)
    assert status == 200 and len(answer["detections"]) > 5
    assert_answer(answer["detections"], onnx_detector, features)
    status, answer = server.detect(features, "?top_k=5&min_score=0.01")
    assert status == 200 and len(answer["detections"]) == 5
    assert_answer(answer["detections"], onnx_detector, features, top_k=5, min_score=0.01)
    small = features[:20].astype(np.float64)  # JSON numbers: float64 round-trips exactly
    status, body = server.request(
        "/v1/detect", json.dumps(small.tolist()).encode(), "application/json"
    )
    assert status == 200
    assert_answer(json.loads(body)["detections"], onnx_detector, small)
    status, answer = server.detect(np.zeros((0, DIM), np.float32))  # a video without snippets
    assert (status, answer) == (200, {"detections": []})


def test_concurrent_clients_are_batched_and_answered_right(server, onnx_detector):
    videos = [video(40 + 7 * i, seed=10 + i) for i in range(8)]
    answers: list = [None] * len(videos)

    def client(i: int) -> None:
        answers[i] = server.detect(videos[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(videos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for features, (status, answer) in zip(videos, answers, strict=True):
        assert status == 200
        assert_answer(answer["detections"], onnx_detector, features)


@pytest.mark.parametrize(
    "path, body, content_type, method, status, message",
    [
        ("/v1/detect", b"\x93NUMPY garbage", "application/octet-stream", None, 400, ".npy"),
        ("/v1/detect", b"not json", "application/json", None, 400, "not JSON"),
        ("/v1/detect", b'{"a": 1}', "application/json", None, 400, "array of rows"),
        ("/v1/detect", b"[[1, 2], [3]]", "application/json", None, 400, "array of numbers"),
        ("/v1/detect", b"[[1, 2]]", "application/json", None, 400, "channels"),
        ("/v1/detect", b"[1, 2, 3]", "application/json", None, 400, "expected shape"),
        (
            "/v1/detect",
            b"[" * 5000 + b"]" * 5000,
            "application/json",
            None,
            400,
            "nested too deeply",
        ),
        ("/v1/detect", b'[["1", "2"]]', "application/json", None, 400, "not strings or booleans"),
        ("/v1/detect", b"[[true, 1.5]]", "application/json", None, 400, "not strings or booleans"),
        ("/v1/detect", b"[[null, 1.5]]", "application/json", None, 400, "array of numbers"),
        (
            "/v1/detect",
            npy(np.zeros((3, DIM), np.float32)) + b"more",
            "application/octet-stream",
            None,
            400,
            "body has 4 bytes after its .npy array",
        ),
        ("/v1/detect?top_k=1&top_k=3", b"[]", "application/json", None, 400, "given twice: top_k"),
        # finite features of extreme magnitude overflow inside the model
        (
            "/v1/detect",
            npy(np.full((50, DIM), 3e38, np.float32)),
            "application/octet-stream",
            None,
            422,
            "outputs are NaN or Inf",
        ),
        (
            "/v1/detect",
            npy(np.full((3, DIM), np.nan, np.float32)),
            "application/octet-stream",
            None,
            400,
            "NaN",
        ),
        (
            "/v1/detect",
            npy(np.array([{"x": 1}], dtype=object)),
            "application/octet-stream",
            None,
            400,
            ".npy",
        ),
        (
            "/v1/detect",
            npy(np.zeros((200, DIM), np.float32)),
            "application/octet-stream",
            None,
            413,
            "limit",
        ),
        ("/v1/detect", b"[]", "text/plain", None, 415, "Content-Type"),
        ("/v1/detect?top_k=0", b"[]", "application/json", None, 400, "top_k"),
        ("/v1/detect?min_score=2", b"[]", "application/json", None, 400, "min_score"),
        ("/v1/detect?limit=3", b"[]", "application/json", None, 400, "unknown query"),
        ("/v1/detect", None, None, "GET", 405, "POST"),
        ("/v1/nothing", None, None, "GET", 404, "no route"),
    ],
    # Long bodies by their size: a test id is read in reports, and .npy bytes are not readable.
    ids=lambda v: f"{len(v)}B" if isinstance(v, bytes) and len(v) > 40 else None,
)
def test_bad_requests_get_one_line_errors(server, path, body, content_type, method, status,
                                          message):  # fmt: skip
    got, answer = server.request(path, body, content_type, method)
    assert got == status
    error = json.loads(answer)["error"]
    assert message in error and "\n" not in error
    # ... and the service keeps serving
    assert server.detect(video(30, seed=2))[0] == 200
