"""``amnet-serve --ray-address``: on a cluster the user owns, the command touches its own Serve
application only. Someone else's Serve is refused, not reconfigured; applications deployed
beside ours survive our stop, and so do requests in flight; Serve started by us goes with us
when nothing else is on it."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from test_serve import Client, free_port, serve_command, wait_ready
from videos import video

from amnet.deploy.serve import APP_NAME, _deploy_failure, _port_free, _stop_serve, make_app

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.usefixtures("ray_serve")]


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
    """One Serve start on the cluster (each costs several actor processes) serves every step."""
    from ray import serve

    port = free_port()
    command = serve_command(models["onnx"], port, "--ray-address", cluster)

    # A GPU service from a driver without a GPU: the cluster decides (here: it has none).
    proc = subprocess.run([*command, "--device", "cuda"], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr == "amnet-serve: error: the model runs on a GPU, and the Ray cluster has none\n"
    )

    # Serve started by amnet-serve; an application deployed beside it meanwhile survives it. A
    # request in flight when SIGTERM comes is answered first: here it waits 3 s on the replica
    # for a second request to batch with, and SIGTERM comes after 1 s.
    slow = [*command[:-1], "--max-batch", "2", "--batch-wait-ms", "3000", "-q"]
    server = subprocess.Popen(slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    answers: list[tuple[int, dict]] = []
    try:
        wait_ready(server, Client(port))
        serve.run(theirs_app(), name="theirs", route_prefix="/theirs")
        assert get(port, "/theirs") == "theirs"
        request = threading.Thread(target=lambda: answers.append(Client(port).detect(video(50))))
        request.start()
        time.sleep(1.0)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=120)
    assert server.returncode == 0 and err == "", err  # -q: nothing to say
    request.join()
    assert answers[0][0] == 200 and "detections" in answers[0][1], answers
    assert set(serve.status().applications) == {"theirs"}
    assert get(port, "/theirs") == "theirs"

    # Serve now runs there with someone else's application: refused in one line, not
    # reconfigured; that application keeps answering. (A new port: Serve's proxy holds ours.)
    again = serve_command(models["onnx"], free_port(), "--ray-address", cluster)
    proc = subprocess.run(again, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "Ray Serve already runs on the cluster" in proc.stderr
    assert get(port, "/theirs") == "theirs"

    # Replicas that cannot open the model (on a node without it): the reason, not Serve's "failed
    # to update the deployments".
    missing = str(models["onnx"].parent / "elsewhere" / "model.onnx")
    with pytest.raises(RuntimeError) as failed:
        serve.run(make_app(missing, {}, 1 << 20, 1, 1, 0.01), name=APP_NAME, route_prefix="/a")
    assert _deploy_failure(serve, failed.value) == f"{missing}: model file not found"
    serve.delete("theirs")

    # Alone on the cluster, Serve goes with our application; the cluster stays.
    serve.run(theirs_app(), name=APP_NAME, route_prefix="/")  # as amnet-serve deploys it
    _stop_serve(serve, joined=True)
    status = serve.status()
    assert not status.applications and not status.proxies
    import ray

    assert ray.cluster_resources()["CPU"] == 2


def test_a_port_held_only_by_closed_connections_is_free():
    """A server stopped a moment ago leaves its connections in TIME_WAIT; the port is free for
    the next amnet-serve (the HTTP server binds with SO_REUSEADDR). A listening socket is not."""
    import socket

    from amnet.errors import AMNetError

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HTTP servers bind
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(AMNetError, match="cannot listen on"):
            _port_free("127.0.0.1", port)
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end of the connection is in TIME_WAIT
        client.close()
    _port_free("127.0.0.1", port)
