"""Where the end-to-end time goes, in one process: reading, the backend, post-processing.

Writes (or reuses) ``amnet-bench``'s synthetic THUMOS14-shaped test set, builds the config's
initialised model, opens a :class:`~amnet.deploy.Detector` on ``--device`` and then, per
precision, times the first videos one by one (compilation and autotuning show there) and the
whole set as ``amnet-bench``'s throughput worker does (read ``.npy`` -> detections), split into
reading, backend calls and post-processing. Prints one JSON line per measurement as it goes.

    python benchmarks/bench_e2e_phases.py --config configs/thumos14_i3d.yaml --device cuda \
        --work /tmp/e2e [--videos N] [--precisions fp32,bf16] [--pack 16 --batch-size 16]
        [--postprocess-workers 8]

With ``--postprocess-workers`` the packed run post-processes in that many processes, overlapped
with the backend calls: its ``post_s`` is then the post-processing time that was not hidden.
``--infer-cli`` also times ``amnet-infer`` itself on the folder (in this process, with the same
device, precision, ``--batch-size`` and ``--postprocess-workers``): checking pass, read-ahead,
the stream of videos through the backend and the pool, and the results JSON written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/thumos14_i3d.yaml")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--videos", type=int, default=None)
    p.add_argument("--preset", default="thumos14")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batch-size", type=int, default=None, help="windows per backend call")
    p.add_argument(
        "--pack",
        type=int,
        default=0,
        help="also time the set with N videos at a time through detect_raw_many (their windows "
        "packed into shared backend calls: fewer, fuller calls on a GPU)",
    )
    p.add_argument(
        "--postprocess-workers",
        type=int,
        default=None,
        help="processes that post-process the packed run's videos (Detector option)",
    )
    p.add_argument("--infer-cli", action="store_true", help="also time amnet-infer on the set")
    args = p.parse_args(argv)

    from amnet.cli.bench import _checkpoint_from_config, _claim_work_folder, _dataset
    from amnet.config import load_config
    from amnet.deploy.detector import Detector
    from amnet.fileio import read_features

    def emit(**row: object) -> None:
        print(json.dumps(row), flush=True)

    began = time.perf_counter()
    dim = int(load_config(args.config)["dataset"]["input_dim"])
    opts = SimpleNamespace(
        layout=None, subset=None, preset=args.preset, videos=args.videos, seed=0, quiet=True
    )
    _claim_work_folder(args.work)  # amnet-bench's rule: never a folder of the user's files
    data, class_names = _dataset(opts, args.work, dim)
    ckpt = _checkpoint_from_config(args.config, args.work, data, class_names, 0)
    files = sorted((data / "features").glob("*.npy"))
    emit(phase="setup", seconds=time.perf_counter() - began, videos=len(files))

    for precision in args.precisions.split(","):
        t0 = time.perf_counter()
        det = Detector(ckpt, args.device, precision=precision, batch_size=args.batch_size,
                       postprocess_workers=args.postprocess_workers)  # fmt: skip
        emit(phase="load", precision=precision, seconds=time.perf_counter() - t0)
        backend_s = 0.0
        run = det.backend.run

        def timed(x, n, run=run):  # type: ignore[no-untyped-def]
            nonlocal backend_s
            t = time.perf_counter()
            result = run(x, n)
            backend_s += time.perf_counter() - t
            return result

        det.backend.run = timed  # type: ignore[method-assign]
        for path in files[:3]:  # the first calls: compilation shows here
            feats = read_features(path, det.input_dim)
            t = time.perf_counter()
            det.detect_raw(feats)
            emit(phase="first", precision=precision, snippets=int(feats.shape[0]),
                 seconds=time.perf_counter() - t)  # fmt: skip
        backend_s = 0.0
        read_s = total_s = 0.0
        snippets = 0
        t_all = time.perf_counter()
        for path in files:
            t = time.perf_counter()
            feats = read_features(path, det.input_dim)
            read_s += time.perf_counter() - t
            det.detect_raw(feats)
            snippets += int(feats.shape[0])
        total_s = time.perf_counter() - t_all
        emit(phase="set", precision=precision, videos=len(files), snippets=snippets,
             seconds=total_s, read_s=read_s, backend_s=backend_s,
             post_s=total_s - read_s - backend_s, batch_size=det.batch_size)  # fmt: skip
        if args.pack > 1:
            if det.postprocess_workers:  # start the pool outside the timing
                det.detect_raw_many([read_features(files[0], det.input_dim)])
            backend_s = read_s = 0.0
            t_all = time.perf_counter()
            for start in range(0, len(files), args.pack):
                t = time.perf_counter()
                group = [read_features(f, det.input_dim) for f in files[start : start + args.pack]]
                read_s += time.perf_counter() - t
                det.detect_raw_many(group)
            total_s = time.perf_counter() - t_all
            emit(phase="set_packed", precision=precision, videos=len(files), pack=args.pack,
                 seconds=total_s, read_s=read_s, backend_s=backend_s,
                 post_s=total_s - read_s - backend_s, batch_size=det.batch_size,
                 postprocess_workers=det.postprocess_workers)  # fmt: skip
        det.close()
        if args.infer_cli:
            from amnet.deploy.infer_cli import main as infer_main

            out = args.work / f"infer_{precision}.json"
            out.unlink(missing_ok=True)
            argv = ["--engine", str(ckpt), str(data / "features"), "-q", "--output", str(out),
                    "--device", args.device, "--precision", precision]  # fmt: skip
            if args.batch_size:
                argv += ["--batch-size", str(args.batch_size)]
            if args.postprocess_workers:
                argv += ["--postprocess-workers", str(args.postprocess_workers)]
            t = time.perf_counter()
            code = infer_main(argv)
            emit(phase="amnet-infer", precision=precision, videos=len(files), exit=code,
                 seconds=time.perf_counter() - t, argv=" ".join(argv[4:]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
