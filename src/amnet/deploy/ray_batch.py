"""``amnet-infer --workers N``: feature files spread over a Ray cluster, one Detector per worker.

Ray (the ``[scale]`` extra) is imported only here, so the thin runtime never loads it. The
driver hands files to workers as they become free (dynamic balance: long videos do not hold up
a queue), writes each finished video to a *shard* file beside the output as it arrives, and at
the end writes the output atomically, in input order, exactly as a single-process run would.

Shards (``<output>.parts/*.jsonl``) make a large job resumable: ``--resume-from OUT`` reads
them, skips the videos already done and finishes the rest. Each shard starts with a header
naming the model (sha256) and the settings that change results; shards of other settings are
refused. A line cut short by a killed job is ignored. The folder is removed once the output is
written.

On a cluster: start Ray on every node (``ray start --head`` on one, ``ray start
--address=HEAD:6379`` on the others), with amnet installed and the model and feature files at
the same paths on every node (a shared file system), then ``amnet-infer ... --workers N
--ray-address HEAD:6379``. Without ``--ray-address`` a local Ray instance is started for the
run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from amnet.annotations import check_video_id
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.fileio import file_sha256

logger = logging.getLogger("amnet.deploy.infer")

SHARD_VERSION = 1


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise AMNetError(
            "--workers needs Ray: pip install 'amnet[scale]' (or pip install 'ray[serve]')"
        ) from None
    return ray


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Ray's variables for its authentication mode ("token" or "disabled") and a cluster to join.
AUTH_MODE_ENV = "RAY_AUTH_MODE"
ADDRESS_ENV = "RAY_ADDRESS"


_AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_default_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray")


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` where nothing listens is named at once (Ray itself retries for minutes).
    Other forms (``auto``, ``ray://...``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise AMNetError(
            f"cannot reach a Ray cluster at {address}: {exc.strerror or exc} (is it started, "
            "and is this its GCS address, e.g. HEAD:6379?)"
        ) from None


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``--ray-address``, else the environment's ``RAY_ADDRESS`` (as Ray's
    own tools read it, e.g. on a KubeRay pod), else None: a private local cluster."""
    return address or os.environ.get(ADDRESS_ENV) or None


def init_ray(ray: Any, address: str | None, num_cpus: int) -> None:
    """Join the Ray cluster at ``address`` (see :func:`cluster_address`), or start a private
    local one of ``num_cpus`` CPUs, with Ray's own logging at warnings and its workers' output
    kept off this console."""
    with _keep_sigterm_handler():
        _init_ray(ray, address, num_cpus)


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Put back this process's Python SIGTERM handler (the command's clean-up on SIGTERM), which
    Ray's start-up replaces with its own: a stack dump and an exit without clean-up."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _init_ray(ray: Any, address: str | None, num_cpus: int) -> None:
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        logger.info("joining the Ray cluster at %s", address)
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ...
            hint = ""
            if not os.environ.get(AUTH_MODE_ENV):
                hint = (
                    f" (a cluster with token authentication, the default of new Ray clusters, "
                    f"also needs {AUTH_MODE_ENV}=token and its token here)"
                )
            raise AMNetError(
                f"cannot reach a Ray cluster at {address}: {_first_line(exc)}{hint}"
            ) from None
        return
    # A private cluster keeps Ray's default, token authentication, without Ray's notice of that
    # default on every run (Ray's other warnings stay).
    logging.getLogger(_AUTH_SETUP_LOGGER).addFilter(_drop_default_auth_notice)
    logger.info("starting a local Ray cluster of %d CPU(s) for this run", num_cpus)
    try:
        # "local": a new instance even where Ray would join the last one `ray start` began.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    except Exception as exc:
        raise AMNetError(f"cannot start a local Ray cluster: {_first_line(exc)}") from None


# -- shards ---------------------------------------------------------------------------------


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def shard_header(model: str | os.PathLike, settings: dict[str, Any]) -> dict[str, Any]:
    return {"amnet_shard": SHARD_VERSION, "model_sha256": file_sha256(model), "settings": settings}


def read_shards(folder: Path, header: dict[str, Any]) -> dict[str, tuple[Detections, float, int]]:
    """The videos done in earlier runs: ``{video_id: (detections, duration, snippets)}``."""
    done: dict[str, tuple[Detections, float, int]] = {}
    if not folder.is_dir():
        return done
    for shard in sorted(folder.glob("*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if not lines or not lines[0]:
            continue  # killed before its header was complete
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError:
            raise AMNetError(f"{shard}: not an amnet-infer shard") from None
        if head != header:
            raise AMNetError(
                f"{folder}: made with another model or other settings; use those, or remove "
                "the folder to start over"
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run (or the empty tail)
            try:
                dets = Detections(entry["segments"], entry["scores"], entry["labels"])
                vid = check_video_id(entry["video_id"], shard)
                done[vid] = (dets, float(entry["duration"]), int(entry["snippets"]))
            except (KeyError, TypeError, ValueError) as exc:  # complete JSON, not a video
                raise AMNetError(
                    f"{shard}: line {number} is not a finished video ({type(exc).__name__}: "
                    f"{_first_line(exc)}); remove the shard to run its videos again"
                ) from None
    return done


class ShardWriter:
    """Appends finished videos to a new shard file (one JSON line each, flushed at once). A
    shard that got no video is removed on close, and so is the folder if this writer made it
    and it is empty: a run that finished nothing leaves nothing to resume."""

    def __init__(self, folder: Path, header: dict[str, Any]) -> None:
        self._made_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / f"shard-{uuid.uuid4().hex[:12]}.jsonl"
        self._file = open(self.path, "x", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._write(header)
        self.videos = 0

    def _write(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def add(self, video_id: str, dets: Detections, duration: float, snippets: int) -> None:
        self._write(
            {
                "video_id": video_id,
                "duration": duration,
                "snippets": snippets,
                "segments": dets.segments.tolist(),
                "scores": dets.scores.tolist(),
                "labels": dets.labels.tolist(),
            }
        )
        self.videos += 1

    def close(self) -> None:
        self._file.close()
        if self.videos:
            return
        self.path.unlink(missing_ok=True)
        if self._made_folder and not any(self.folder.iterdir()):
            self.folder.rmdir()


# -- workers --------------------------------------------------------------------------------


class _Worker:
    """One Detector in a Ray actor; runs one feature file per call."""

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        from amnet.deploy.detector import Detector

        self.error: str | None = None
        try:
            self.detector = Detector(model, **options)
        except Exception as exc:  # said by ready(), in the driver: Ray's own report hides it
            self.error = _first_line(exc)

    def ready(self) -> tuple[str, str | None]:
        """This worker's node, and why it cannot run the model (None: it can)."""
        import ray

        return ray.util.get_node_ip_address(), self.error

    def detect(self, path: str, video_id: str) -> tuple[str, Any]:
        from amnet.fileio import read_features

        try:
            array = read_features(path, self.detector.input_dim, mmap=True)
        except AMNetError as exc:  # its words name the file
            return video_id, str(exc)
        try:
            dets = self.detector.detect_raw(array)
        except AMNetError as exc:  # the model's (outputs that overflow): name the file
            return video_id, f"{path}: {exc}"
        return video_id, (dets, self.detector.duration_of(array.shape[0]), int(array.shape[0]))


def driver_options(
    engine: str | os.PathLike, options: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """How the driver opens the model for its contract (classes, time convention, settings),
    and whether the run is on GPUs. The contract does not depend on the device: for a GPU run
    the driver reads it on its CPU, so that a driver on a node without a GPU (a Ray head node)
    can run GPU workers or replicas; each of those opens the model as asked and says in one
    line if it cannot. A TensorRT engine opens on a GPU only."""
    from amnet.deploy.backends import BACKEND_SUFFIXES

    suffix = Path(engine).suffix.lower()
    gpu_run = options.get("device") == "cuda" and BACKEND_SUFFIXES.get(suffix) != "tensorrt"
    if not gpu_run:
        return options, False
    return {**options, "device": "cpu", "precision": "fp32"}, True


def worker_resources(
    resources: Mapping[str, float], workers: int, threads: int, gpu: bool, flag: str
) -> tuple[int, dict[str, float]]:
    """How many Ray workers (or Serve replicas) to start for ``workers`` asked, on a cluster of
    ``resources`` (``ray.cluster_resources()``), and the Ray resources of each: ``threads`` CPUs,
    and where the model runs on a GPU a share of one, the workers spread evenly over the
    cluster's GPUs (4 on 2 GPUs: half a GPU each). Ray then puts each on a GPU of its own node
    (``CUDA_VISIBLE_DEVICES``). As many as the CPUs fit run, with a warning: one that did not fit
    would wait for ever, and so would the files handed to it."""
    cpus = int(resources.get("CPU", 0))
    fit = cpus // threads
    if fit < 1:
        raise AMNetError(
            f"the Ray cluster has {cpus} CPU(s); one worker needs {threads} (--threads)"
        )
    if fit < workers:
        logger.warning(
            "%s %d asks for %d CPU(s) and the Ray cluster has %d: running %d",
            flag, workers, workers * threads, cpus, fit,
        )  # fmt: skip
    count = min(workers, fit)
    options: dict[str, float] = {"num_cpus": threads}
    if gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise AMNetError("the model runs on a GPU, and the Ray cluster has none")
        options["num_gpus"] = 1.0 / math.ceil(count / gpus)
    return count, options


def run_on_ray(
    model: str,
    options: dict[str, Any],
    files: Sequence[tuple[str, str]],
    workers: int,
    address: str | None,
    on_result: Callable[[str, Any], None],
    gpu: bool = False,
) -> None:
    """Run ``files`` (``(path, video_id)``) on ``workers`` Ray actors, calling ``on_result(id,
    result)`` in the driver as each finishes (``result``: ``(detections, duration, snippets)``
    or an error message). ``gpu``: the model runs on a GPU, so each actor takes a share of one
    (:func:`worker_resources`)."""
    ray = import_ray()

    address = cluster_address(address)
    if address:
        _check_reachable(address)  # also where this process already runs Ray
    threads = options.get("intra_op_threads") or 1
    started = not ray.is_initialized()  # else: this process's own Ray session is used
    if started:
        init_ray(ray, address, workers * threads)
    try:
        workers, resources = worker_resources(
            ray.cluster_resources(), workers, threads, gpu, "--workers"
        )
        actor = ray.remote(**resources)(_Worker)
        _hand_out(ray, [actor.remote(model, options) for _ in range(workers)], files, on_result)
    except ray.exceptions.RayActorError as exc:
        raise AMNetError(f"a Ray worker died: {_first_line(exc)}") from None
    finally:
        if started:
            ray.shutdown()


def _hand_out(
    ray: Any, actors: list[Any], files: Sequence[tuple[str, str]],
    on_result: Callable[[str, Any], None],
) -> None:  # fmt: skip
    """Give each file to the next free worker; a worker joins as soon as it is up, so on a busy
    shared cluster the run starts with the first ones while the others wait for their CPUs.
    A worker that cannot open the model is left out with a warning (one line naming its node);
    if none can, the run stops in that line."""
    starting = {a.ready.remote(): a for a in actors}
    running: dict[Any, Any] = {}  # task -> its worker
    idle: list[Any] = []
    queue = deque(files)
    refused: list[str] = []
    while queue or running:
        if not starting and not running and not idle:
            raise AMNetError(refused[-1])
        done, _ = ray.wait([*starting, *running], num_returns=1)
        if done[0] in starting:
            worker = starting.pop(done[0])
            node, error = ray.get(done[0])
            if error is not None:
                refused.append(
                    f"a Ray worker on {node} cannot open the model: {error} (every node needs "
                    "amnet, and the model and features at the same paths: a shared file system)"
                )
                logger.warning("%s", refused[-1])
                ray.kill(worker)
                continue
        else:
            worker = running.pop(done[0])
            on_result(*ray.get(done[0]))
        idle.append(worker)
        while idle and queue:
            free = idle.pop()
            running[free.detect.remote(*queue.popleft())] = free


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()  # Ray colours its reports
    return text[0] if text else type(exc).__name__
