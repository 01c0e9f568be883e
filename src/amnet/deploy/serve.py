"""``amnet-serve``: detections over HTTP, on Ray Serve (the ``[scale]`` extra).

::

    amnet-serve --engine MODEL [--host 127.0.0.1] [--port 8000] [--replicas N]
        [--max-body-mb 64] [--max-batch N] [--batch-wait-ms 10] [--threads N] [--device cpu]
        [--runtime openvino] [--precision bf16]

Routes:

- ``GET /healthz``: 200 ``ok`` once a replica has loaded the model.
- ``GET /v1/model``: :meth:`Detector.describe` (classes, feature convention, window,
  precision, the source checkpoint's SHA-256, ...) and ``max_body_bytes``.
- ``POST /v1/detect``: the body is one video's ``[T, C]`` features, either a ``.npy`` file
  (``Content-Type: application/octet-stream``) or a JSON array (``application/json``);
  query parameters ``top_k`` and ``min_score``. Answers ``{"detections": [{"label",
  "label_id", "segment": [s, e], "score"}, ...]}``, best first: what ``Detector(MODEL)(features,
  top_k=..., min_score=...)`` gives.

Bad requests get a 4xx status and a one-line JSON ``{"error": ...}``: 400 for a body that is not
an array of the model's shape or holds NaN/Inf or for bad query parameters, 404/405 for other
routes and methods, 413 past ``--max-body-mb`` (the body is not kept: it is read and dropped
so that the client gets the answer), 415 for other content types. The service keeps serving.

Requests that arrive together are batched (Ray Serve's ``@serve.batch``, up to ``--max-batch``
within ``--batch-wait-ms``): their windows are packed into shared backend calls
(:meth:`Detector.detect_raw_many`), which pays on a GPU. On a CPU one window per call is
fastest, so the default there is no batching (docs/BENCHMARKS.md). Replicas scale across a
cluster (``--replicas``, ``--ray-address``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import math
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from amnet.cli.common import OneLineParser, run_cli, setup_logging
from amnet.deploy.detector import VideoError
from amnet.deploy.ray_batch import (
    cluster_address,
    driver_options,
    init_ray,
    worker_resources,
)
from amnet.errors import AMNetError

logger = logging.getLogger("amnet.deploy.serve")

PROG = "amnet-serve"
APP_NAME = "amnet"  # the Ray Serve application's name
DEFAULT_MAX_BODY_MB = 64.0
DEFAULT_BODY_TIMEOUT_S = 10.0
_QUERY = ("top_k", "min_score")
# An oversized body is read (and dropped) up to this many times the limit before answering 413.
_DRAIN_FACTOR = 8
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both drain the service and stop it


class RequestError(Exception):
    """A bad request: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the service (plain Python; Ray Serve wraps it) -------------------------------------------


class DetectionService:
    """Parses requests, runs the detector, formats answers. Framework-free, so that it can be
    tested and reused under another server."""

    def __init__(self, model: str, options: dict[str, Any], max_body_bytes: int = 64 << 20) -> None:
        from amnet.deploy.detector import Detector

        self.detector = Detector(model, **options)
        self.max_body_bytes = int(max_body_bytes)
        # Once, at load: for a .pt model it hashes the file that was just loaded.
        self._model_info = {**self.detector.describe(), "max_body_bytes": self.max_body_bytes}

    def model_info(self) -> dict[str, Any]:
        return self._model_info

    def parse_query(
        self, pairs: Mapping[str, str] | Sequence[tuple[str, str]]
    ) -> tuple[int | None, float | None]:
        """``top_k`` and ``min_score`` of the query (its ``(key, value)`` pairs in order)."""
        items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
        keys = [key for key, _ in items]
        unknown = sorted(set(keys) - set(_QUERY))
        if unknown:
            raise RequestError(400, f"unknown query parameter(s): {', '.join(unknown)}")
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:  # which one would count is a guess: say so instead
            raise RequestError(400, f"query parameter(s) given twice: {', '.join(twice)}")
        query = dict(items)
        top_k = min_score = None
        if "top_k" in query:
            try:
                top_k = int(query["top_k"])
            except ValueError:
                top_k = 0
            if top_k < 1:
                raise RequestError(400, f"top_k must be an integer >= 1, got {query['top_k']!r}")
        if "min_score" in query:
            try:
                min_score = float(query["min_score"])
            except ValueError:
                min_score = math.nan
            if not 0.0 <= min_score <= 1.0:
                raise RequestError(
                    400, f"min_score must be a number in [0, 1], got {query['min_score']!r}"
                )
        return top_k, min_score

    def parse_body(self, body: bytes, content_type: str) -> np.ndarray:
        """The request's features as a prepared float32 ``[T, C]`` array."""
        kind = content_type.split(";")[0].strip().lower()
        if kind == "application/octet-stream":
            stream = io.BytesIO(body)
            try:
                array = np.lib.format.read_array(stream, allow_pickle=False)
            except Exception as exc:  # numpy raises ValueError, EOFError, OSError, ...
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise RequestError(400, f"body is not a .npy array ({reason})") from None
            if stream.tell() != len(body):  # a second array, or anything else, would be dropped
                extra = len(body) - stream.tell()
                raise RequestError(400, f"body has {extra} bytes after its .npy array")
        elif kind == "application/json":
            try:
                value = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(400, f"body is not JSON ({exc})") from None
            except RecursionError:  # Python's parser recurses per level: [[[[...
                raise RequestError(400, "body is not JSON (nested too deeply)") from None
            if not isinstance(value, list):
                raise RequestError(400, "JSON body must be an array of rows [[...], ...]")
            numbers = "JSON body must be a [T, C] array of numbers"
            # numpy would read "1" and true as numbers; in an array of numbers, a quote or
            # these literals can only be a string or a boolean.
            if b'"' in body or b"true" in body or b"false" in body:
                raise RequestError(400, f"{numbers} (not strings or booleans)")
            try:
                array = np.asarray(value)
            except (TypeError, ValueError, OverflowError):
                raise RequestError(400, numbers) from None
            if array.dtype.kind not in "iuf":  # null, or integers beyond 64 bits
                raise RequestError(400, numbers)
        else:
            raise RequestError(
                415,
                f"Content-Type {kind or 'none'!r}: send application/octet-stream (.npy) or "
                "application/json",
            )
        try:
            return self.detector.prepare(array, name="body")
        except AMNetError as exc:
            raise RequestError(400, str(exc)) from None

    def detect(self, items: list[tuple[np.ndarray, int | None, float | None]]) -> list[dict]:
        """Detections of several prepared videos (one batch), as response bodies; a video the
        model cannot answer (its outputs overflow) gets ``{"error", "status"}`` instead, and
        the others of its batch their detections."""
        try:
            found = self.detector.detect_raw_many(
                [a for a, _, _ in items], [k for _, k, _ in items], [m for _, _, m in items]
            )
        except VideoError as exc:  # not other failures: those are the server's, not the request's
            if len(items) == 1:
                return [{"error": exc.reason, "status": 422}]
            return [answer for item in items for answer in self.detect([item])]
        out = []
        for dets in found:
            out.append(
                {
                    "detections": [
                        {
                            "label": d.label,
                            "label_id": d.label_id,
                            "segment": [d.start, d.end],
                            "score": d.score,
                        }
                        for d in self.detector.to_detections(dets)
                    ]
                }
            )
        return out


# -- Ray Serve --------------------------------------------------------------------------------


def import_serve() -> tuple[Any, Any]:
    try:
        with warnings.catch_warnings():
            # Importing Serve trips deprecations inside Ray's own use of its dependencies
            # (pydantic's): nothing a user of this package can act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            import ray
            from ray import serve
    except ImportError:
        raise AMNetError(
            "amnet-serve needs Ray Serve: pip install 'amnet[scale]' (or 'ray[serve]')"
        ) from None
    return ray, serve


def make_app(
    model: str,
    options: dict[str, Any],
    max_body_bytes: int,
    replicas: int,
    max_batch: int,
    batch_wait_s: float,
    resources: dict[str, float] | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> Any:
    """The Ray Serve application: ``replicas`` copies of the service behind one HTTP route, each
    with ``resources`` (Ray actor options; default: as many CPUs as ONNX Runtime threads)."""
    _, serve = import_serve()
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    class AMNetDeployment:
        def __init__(self) -> None:
            self.service = DetectionService(model, options, max_body_bytes)
            self.detect_batch.set_max_batch_size(max_batch)
            self.detect_batch.set_batch_wait_timeout_s(batch_wait_s)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def detect_batch(self, items: list[tuple]) -> list[dict]:
            # In a thread: the event loop keeps reading requests while the model runs.
            return await asyncio.to_thread(self.service.detect, items)

        async def __call__(self, request: Request) -> Any:
            path, method = request.url.path.rstrip("/") or "/", request.method
            routes = {"/healthz": "GET", "/v1/model": "GET", "/v1/detect": "POST"}
            if path not in routes:
                return error(404, f"no route {path}; try /v1/detect, /v1/model, /healthz")
            if method != routes[path]:
                return error(405, f"{path} takes {routes[path]}, not {method}")
            if path == "/healthz":
                return PlainTextResponse("ok")
            if path == "/v1/model":
                return JSONResponse(self.service.model_info())
            try:
                query = self.service.parse_query(request.query_params.multi_items())
                body = await self._read_body(request)
                array = self.service.parse_body(body, request.headers.get("content-type", ""))
            except RequestError as exc:
                return error(exc.status, str(exc))
            answer = await self.detect_batch((array, *query))
            if "error" in answer:
                return error(answer["status"], answer["error"])
            return JSONResponse(answer)

        async def _read_body(self, request: Request) -> bytes:
            limit = self.service.max_body_bytes
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > _DRAIN_FACTOR * limit:
                # More than would be drained (below): answer now, not once it has arrived.
                raise RequestError(413, f"body of {declared} bytes, larger than the limit {limit}")
            body = bytearray()
            seen = 0
            parts = request.stream().__aiter__()
            while True:
                # A client that stops sending would hold a replica's request slot for ever
                # (a few such clients, every slot): it gets 408 after body_timeout_s of silence.
                try:
                    part = await asyncio.wait_for(parts.__anext__(), body_timeout_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise RequestError(
                        408, f"no body data for {body_timeout_s:g} s; the request was dropped"
                    ) from None
                seen += len(part)
                if seen <= limit:
                    body += part
                elif seen > _DRAIN_FACTOR * limit:
                    break  # stop reading a flood; the connection may drop before the answer
            if seen > limit:
                # The rest was read and dropped (not kept), so that the client, still sending,
                # gets the answer instead of a broken pipe.
                raise RequestError(413, f"body of {seen}+ bytes, larger than the limit {limit}")
            return bytes(body)

    deployment = serve.deployment(
        num_replicas=replicas,
        ray_actor_options=resources or {"num_cpus": options.get("intra_op_threads") or 1},
        max_ongoing_requests=max(2 * max_batch, 8),
        # On stop, a replica checks this often whether its requests in flight are done (Serve's
        # default, 2 s, made every stop take seconds with nothing in flight).
        graceful_shutdown_wait_loop_s=0.5,
    )(AMNetDeployment)
    return deployment.bind()


# -- command line -----------------------------------------------------------------------------


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Serve AMNet detections over HTTP (Ray Serve): POST /v1/detect with a .npy "
        "or JSON [T, C] body; GET /v1/model, /healthz.",
    )
    parser.add_argument("--engine", required=True, metavar="MODEL", help=".onnx, .plan or .pt")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (%(default)s)")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas (%(default)s)")
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="an existing Ray cluster (default: $RAY_ADDRESS if set, else a local one)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        help="largest request body in MiB (%(default)s)",
    )
    parser.add_argument(
        "--body-timeout-s",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help="drop a request whose body stops arriving for this long, with 408 (%(default)s)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        help="requests batched together (default: 1 on a CPU, 8 on a GPU)",
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=10.0, help="wait to fill a batch (%(default)s ms)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the backend's own")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads per replica")
    parser.add_argument(
        "--runtime", choices=("onnxruntime", "openvino"), help=".onnx models: the CPU runtime"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="(default: %(default)s)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _check(args: argparse.Namespace) -> None:
    for flag, value in (("--replicas", args.replicas), ("--threads", args.threads or 1)):
        if value < 1:
            raise AMNetError(f"{flag} must be >= 1, got {value}")
    if args.max_batch is not None and args.max_batch < 1:
        raise AMNetError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb > 0):
        raise AMNetError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if not (math.isfinite(args.body_timeout_s) and args.body_timeout_s > 0):
        raise AMNetError(f"--body-timeout-s must be > 0, got {args.body_timeout_s}")
    if not (math.isfinite(args.batch_wait_ms) and args.batch_wait_ms >= 0):
        raise AMNetError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    if not 0 < args.port < 65536:
        raise AMNetError(f"--port must be in 1-65535, got {args.port}")


def _port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the HTTP server binds: connections of a server stopped a moment ago (TIME_WAIT)
        # do not hold the port, a listening socket does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AMNetError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    _check(args)
    ray, serve = import_serve()
    if not args.verbose:  # Serve's own INFO lines in this process (its actors log at WARNING)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    from amnet.deploy.detector import Detector

    options = {
        "device": args.device,
        "intra_op_threads": args.threads or 1,
        "precision": args.precision,
        "runtime": args.runtime,
    }
    contract, gpu_run = driver_options(args.engine, options)
    with Detector(args.engine, **contract) as probe:  # the model, checked here in one line
        on_gpu = gpu_run or probe.device != "cpu"
    max_batch = args.max_batch or (8 if on_gpu else 1)
    _port_free(args.host, args.port)
    address = cluster_address(args.ray_address)
    init_ray(ray, address, args.replicas * (args.threads or 1))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    serve_started = False
    try:
        if address:
            running = serve.status()
            if running.proxies or running.applications:
                # Its HTTP options would not be applied, and its apps are not ours to touch.
                raise AMNetError(
                    f"Ray Serve already runs on the cluster at {address}; amnet-serve "
                    "starts its own there (on --host/--port): stop that one first, or serve "
                    "without --ray-address"
                )
        replicas, resources = worker_resources(
            ray.cluster_resources(), args.replicas, args.threads or 1, on_gpu, "--replicas"
        )
        serve.start(
            http_options={"host": args.host, "port": args.port},
            logging_config={"log_level": "WARNING"},
        )
        serve_started = True
        app = make_app(
            str(args.engine),
            options,
            int(args.max_body_mb * (1 << 20)),
            replicas,
            max_batch,
            args.batch_wait_ms / 1000.0,
            resources,
            args.body_timeout_s,
        )
        try:
            serve.run(app, route_prefix="/", name=APP_NAME)
        except RuntimeError as exc:  # Serve's own error names no cause: the replicas' does
            raise AMNetError(f"the service did not start: {_deploy_failure(serve, exc)}") from None
        if not args.quiet:
            print(
                f"{PROG}: serving {args.engine} on http://{args.host}:{args.port} "
                f"({replicas} replica(s), batches of up to {max_batch}); Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
        stop.wait()
    finally:
        if serve_started:
            _stop_serve(serve, joined=bool(address))
        ray.shutdown()
        for sig, handler in previous.items():  # as they were, for a caller in this process
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    return 0


def _deploy_failure(serve: Any, exc: Exception) -> str:
    """Why the application did not deploy: the last line of its replicas' report (the error
    they raised, e.g. a model file missing on their node), else Serve's own message."""
    app = serve.status().applications.get(APP_NAME)
    for deployment in app.deployments.values() if app else ():
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        if lines:
            return lines[-1].removeprefix("amnet.errors.AMNetError: ")
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _stop_serve(serve: Any, joined: bool) -> None:
    """Take this command's application down, letting requests in flight finish (deleting the
    application drains its replicas; shutting Serve or Ray down would drop them). On a cluster
    it joined, Serve itself goes too only when no one else's application was deployed on it
    meanwhile; a private cluster goes with ``ray.shutdown()``."""
    serve.delete(APP_NAME)
    if joined and not serve.status().applications:
        serve.shutdown()


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
