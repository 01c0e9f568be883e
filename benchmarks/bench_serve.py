"""Load test of ``amnet-serve``: N concurrent clients, a fixed count of requests, local only.

Starts ``amnet-serve`` on 127.0.0.1 once per ``--max-batch`` value, waits for ``/healthz``,
then N client threads POST ``.npy`` bodies of one video (``--length`` snippets) to
``/v1/detect`` until ``--requests`` have been answered. Reports throughput and p50/p99 latency
per setting, side by side; every answer must be 200 and equal to the first.

    python benchmarks/bench_serve.py --engine work/mem/paper.onnx --length 1600 \
        --clients 4 --requests 32 --max-batch 1,4
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine: str, port: int, max_batch: int, threads: int) -> subprocess.Popen:
    script = shutil.which("amnet-serve", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen(
        [
            script,
            "--engine",
            engine,
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--threads",
            str(threads),
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("amnet-serve did not become ready")


def load(port: int, body: bytes, clients: int, requests: int) -> tuple[float, list[float], set]:
    url = f"http://127.0.0.1:{port}/v1/detect"
    latencies: list[float] = []
    answers: set[str] = set()
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/octet-stream"}
            )
            began = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as r:
                text = r.read().decode()
                assert r.status == 200
            with lock:
                latencies.append(time.perf_counter() - began)
                answers.add(text)

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began, latencies, answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--length", type=int, default=1600, help="snippets per request's video")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-batch", default="1,4", help="comma-separated settings to compare")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the replica")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    from amnet.deploy import Detector

    dim = Detector(args.engine).input_dim
    features = np.abs(rng.normal(0.0, 0.2, (args.length, dim))).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, features)
    body = buffer.getvalue()

    rows = []
    first_answer = None
    for max_batch in [int(v) for v in args.max_batch.split(",")]:
        port = free_port()
        proc = start_server(args.engine, port, max_batch, args.threads)
        try:
            load(port, body, 1, 2)  # warm-up
            wall, lat, answers = load(port, body, args.clients, args.requests)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        first_answer = first_answer or next(iter(answers))
        ms = np.array(lat) * 1000
        rows.append((max_batch, args.requests / wall, np.percentile(ms, 50),
                     np.percentile(ms, 99), answers == {first_answer}))  # fmt: skip
        print(f"max-batch {max_batch}: {rows[-1][1]:.2f} req/s", flush=True)

    print()
    detections = len(json.loads(first_answer)["detections"])
    print(f"{args.clients} clients, {args.requests} requests of {args.length} snippets "
          f"({len(body) / 2**20:.1f} MiB .npy, {detections} detections each), "
          f"1 replica x {args.threads} threads")  # fmt: skip
    print()
    print("| max batch | requests/s | p50 ms | p99 ms | answers identical |")
    print("| --- | --- | --- | --- | --- |")
    for max_batch, rps, p50, p99, same in rows:
        print(f"| {max_batch} | {rps:.2f} | {p50:.0f} | {p99:.0f} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
