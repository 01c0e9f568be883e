"""``amnet-serve --ray-address``: on a cluster the user owns, the command touches its own Serve
application only. Someone else's Serve is refused, not reconfigured; applications deployed
beside ours survive our stop; Serve started by us goes with us when nothing else is on it."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

import pytest

pytest.importorskip("ray.serve", reason="the [scale] extra (Ray Serve) is not installed")
from test_serve import Client, free_port, serve_command, wait_ready
from videos import video

pytestmark = pytest.mark.xdist_group("ray")


def theirs_app():
    """An application of the cluster's owner (no CPU of its own: the cluster is small)."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Theirs:
        def __call__(self, request) -> str:
            return "theirs"

    return Theirs.bind()


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as answer:
        return answer.read().decode()


def test_serve_on_a_joined_cluster_touches_only_its_own_app(cluster, models):
    from ray import serve

    port = free_port()
    command = serve_command(models["onnx"], port, "--ray-address", cluster)

    # Serve already runs there: refused in one line; its application keeps answering.
    their_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": their_port})
    serve.run(theirs_app(), name="theirs", route_prefix="/theirs")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "Ray Serve already runs on the cluster" in proc.stderr
    assert get(their_port, "/theirs") == "theirs"
    serve.shutdown()

    def stopped_cleanly(server: subprocess.Popen) -> None:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=120)
        assert server.returncode == 0 and err == "", err  # -q: nothing to say

    # Serve started by amnet-serve; an application deployed beside it meanwhile survives it.
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(server, Client(port))
        serve.run(theirs_app(), name="theirs", route_prefix="/theirs")
        assert get(port, "/theirs") == "theirs"
    finally:
        stopped_cleanly(server)
    assert set(serve.status().applications) == {"theirs"}
    assert get(port, "/theirs") == "theirs"
    serve.shutdown()

    # Alone on the cluster: Serve goes with it, the cluster stays. (Restarted on the port just
    # given up, whose connections may still be in TIME_WAIT: that does not make it "in use".)
    # A request in flight when SIGTERM comes is answered first: here it waits 3 s on the replica
    # for a second request to batch with, and SIGTERM comes after 1 s.
    slow = [*command[:-1], "--max-batch", "2", "--batch-wait-ms", "3000", "-q"]
    server = subprocess.Popen(slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    answers: list[tuple[int, dict]] = []
    try:
        wait_ready(server, Client(port))
        request = threading.Thread(target=lambda: answers.append(Client(port).detect(video(50))))
        request.start()
        time.sleep(1.0)
    finally:
        stopped_cleanly(server)
    request.join()
    assert answers[0][0] == 200 and "detections" in answers[0][1], answers
    status = serve.status()
    assert not status.applications and not status.proxies
    import ray

    assert ray.cluster_resources()["CPU"] == 2
