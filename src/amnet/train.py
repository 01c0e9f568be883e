"""Training: AdamW, linear warm-up then cosine, gradient clipping, model EMA, AMP on CUDA.

Reads as build → epoch → validate: :func:`build_run` sets everything up, :func:`train_one_epoch`
and :func:`validate` are one step each, :func:`train` loops over epochs and writes checkpoints.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from amnet import __version__
from amnet.checkpoint import read_checkpoint, save_checkpoint
from amnet.config import config_from_dict
from amnet.console import bar_disabled
from amnet.cpus import fit_to_cpus
from amnet.data import (
    VideoFeatureDataset,
    collate_videos,
    feature_statistics,
    make_dataset,
)
from amnet.errors import AMNetError
from amnet.evaluation import evaluate_model
from amnet.fileio import check_out_path, exclusive_lock, temp_beside
from amnet.kernels import attention_backend
from amnet.model import AMNet, AMNetLoss

log = logging.getLogger(__name__)
# A run folder's checkpoints, and the lock its writer holds (removed when the run ends).
CHECKPOINTS = ("last.pt", "best.pt")
RUN_LOCK = ".amnet-train.lock"
# ``resume`` that means: this run's own last.pt if it has one, else a new run.
AUTO_RESUME = "auto"


class ModelEma:
    """Exponential moving average of a model's parameters and buffers, with a warm-up.

    The decay at update ``n`` is ``min(decay, (1 + n) / (10 + n))``: a fixed 0.999 over a run
    of ~800 steps would keep ~45% of the random initialisation in the average, while the
    warm-up lets the average follow the model early and settle at ``decay`` after ~10,000
    steps (it reaches 0.99 after ~900).
    """

    def __init__(self, model: AMNet, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        averaged, current = [], []
        for ema_v, v in zip(
            self.module.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if ema_v.dtype.is_floating_point:
                averaged.append(ema_v)
                current.append(v.detach())
            else:
                ema_v.copy_(v)
        if averaged:  # one multi-tensor kernel instead of one small kernel per tensor
            torch._foreach_lerp_(averaged, current, 1.0 - decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases, norms or scales."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, opt: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; the fused implementation (one kernel for all
    parameters, CPU and CUDA) where this torch has it for the model's device: the same update,
    2.5x faster than the per-tensor loop on 2 CPU cores for the paper-size model."""
    groups = parameter_groups(model, opt["weight_decay"])
    try:
        return torch.optim.AdamW(groups, lr=opt["learning_rate"], fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, lr=opt["learning_rate"])


def train(
    cfg: dict[str, Any],
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    epochs: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train AMNet; writes ``last.pt`` (and ``best.pt`` when validating) into ``out_dir``.

    ``seed`` defaults to 0; a resumed run keeps the seed and random streams of its checkpoint,
    so it ends where the uninterrupted run would have (on the same machine and device).

    A folder that already holds a run's checkpoints is only written to with ``resume`` (continue
    it) or ``overwrite`` (start again): finished work is never replaced silently.
    ``resume="auto"`` continues ``out_dir/last.pt`` where there is one and starts the run where
    there is none: one command for a job that a scheduler may stop and start again."""
    if not isinstance(cfg, Mapping):
        raise AMNetError(
            f"the config must be a mapping (amnet.config.load_config(path)), got {type(cfg).__name__}"
        )
    # A partial mapping is completed from the defaults and checked, as a YAML file would be.
    cfg = config_from_dict(cfg)
    if resume is not None and overwrite:
        raise AMNetError(
            "--resume and --overwrite do not go together: one continues the run, the other "
            "starts it again"
        )
    auto = isinstance(resume, str) and resume == AUTO_RESUME
    if auto and Path(AUTO_RESUME).exists():
        raise AMNetError(
            f"--resume {AUTO_RESUME}: a file of that name is here too; write ./{AUTO_RESUME} for it"
        )
    if seed is not None and (isinstance(seed, bool) or not 0 <= seed < 2**32):
        raise AMNetError(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    if epochs is not None and epochs < 0:
        raise AMNetError("--epochs must be >= 0")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AMNetError(f"{out_dir}: exists and is not a folder")
    created_dir = not out_dir.exists()
    _refuse_existing_run(out_dir, resume, overwrite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AMNetError(f"{out_dir}: cannot create the run folder ({exc.strerror})") from None
    # Fail before any work when the checkpoints could not be written at the end of an epoch.
    for name in CHECKPOINTS:
        check_out_path(out_dir / name)
    temp_beside(out_dir / "last.pt").unlink()  # the folder is writable (read-only mounts too)
    try:
        # One writer per run folder: a second amnet-train started on it meanwhile would
        # interleave its log and replace the first one's checkpoints.
        with exclusive_lock(out_dir / RUN_LOCK, _busy_message(out_dir)):
            note = None
            if auto:
                resume = out_dir / "last.pt" if (out_dir / "last.pt").is_file() else None
                note = f"--resume auto: {f'continuing {resume}' if resume else 'a new run'}"
            _refuse_existing_run(out_dir, resume, overwrite)  # one that ran meanwhile
            return _train_logged(
                cfg, data_dir, out_dir, epochs, seed, device, resume, progress, note
            )
    except AMNetError:
        # Bad input found before the first checkpoint: no new folder is left behind.
        if created_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _busy_message(out_dir: Path) -> str:
    return (
        f"{out_dir}: another amnet-train is writing this run; wait for it or choose another --out"
    )


def _refuse_existing_run(out_dir: Path, resume: object, overwrite: bool) -> None:
    existing = [name for name in CHECKPOINTS if (out_dir / name).exists()]
    if existing and resume is None and not overwrite:
        raise AMNetError(
            f"{out_dir}: already holds a run ({', '.join(existing)}); pass --resume "
            f"{out_dir / 'last.pt'} to continue it or --overwrite to start again"
        )
    # Continuing another run's checkpoint here would replace this run's checkpoints.
    other = isinstance(resume, (str, os.PathLike)) and resume != AUTO_RESUME
    if existing and other and not _same_file(Path(resume).parent, out_dir):  # type: ignore[arg-type]
        raise AMNetError(
            f"{out_dir}: already holds a run ({', '.join(existing)}), and {resume} is another "
            f"run's checkpoint; continue it in its own folder or in an empty --out"
        )


def _train_logged(
    cfg: dict[str, Any],
    data_dir: str | os.PathLike | None,
    out_dir: Path,
    epochs: int | None,
    seed: int | None,
    device: str,
    resume: str | os.PathLike | None,
    progress: bool,
    note: str | None = None,
) -> dict[str, Any]:
    """:func:`_train` with ``train.log`` beside the checkpoints (``note`` logged first); on bad
    input found before the first checkpoint, no new log is left behind."""
    log_path = out_dir / "train.log"
    created_log = not log_path.exists()
    try:
        handler = logging.FileHandler(log_path)
    except OSError as exc:
        raise AMNetError(f"{log_path}: cannot write ({exc.strerror})") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("amnet")
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    if note:
        log.info("%s", note)
    bad_input = False
    try:
        return _train(cfg, data_dir, out_dir, epochs, seed, device, resume, progress)
    except AMNetError:
        bad_input = True
        raise
    finally:
        logging.getLogger("amnet").removeHandler(handler)
        handler.close()
        if bad_input and created_log and not any((out_dir / n).exists() for n in CHECKPOINTS):
            log_path.unlink(missing_ok=True)


@dataclass
class TrainingRun:
    """Everything one training run updates, built once by :func:`build_run`."""

    cfg: dict[str, Any]
    out_dir: Path
    device: torch.device
    seed: int
    epochs: int
    class_names: list[str]
    train_set: VideoFeatureDataset
    val_set: VideoFeatureDataset | None
    model: AMNet
    criterion: AMNetLoss
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loader: DataLoader
    use_amp: bool
    start_epoch: int = 0
    best_map: float = -1.0
    # Checkpoints of the run an --overwrite run replaces: removed with its first checkpoint (a
    # best.pt left beside a new last.pt would be evaluated as this run's best).
    replaced: tuple[str, ...] = ()

    def save(self, name: str, epoch: int, weights: str = "ema") -> None:
        self._save(name, epoch, weights)
        for old in self.replaced:
            if old != name:
                (self.out_dir / old).unlink(missing_ok=True)
        self.replaced = ()

    def _save(self, name: str, epoch: int, weights: str) -> None:
        save_checkpoint(
            self.out_dir / name, config=self.cfg, class_names=self.class_names, model=self.model.state_dict(),
            ema=self.ema.module.state_dict(), ema_updates=self.ema.updates, weights=weights,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            loss_norm=float(self.criterion.loss_norm), epoch=epoch, best_map=self.best_map, seed=self.seed,
            scaler=self.scaler.state_dict(), rng=self.rng_state(),
        )  # fmt: skip

    def rng_state(self) -> dict[str, Any]:
        """Every random stream the run draws from (shuffling, crops, dropout and the global
        generators), so that a resumed run continues them where the interrupted one stopped
        and ends with the weights an uninterrupted run would have."""
        numpy_state = np.random.get_state(legacy=False)
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": self.loader.generator.get_state(),
            "crops": self.train_set.rng.bit_generator.state,
            "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                               "pos": int(numpy_state["state"]["pos"])}},
            "python": random.getstate(),
        }  # fmt: skip

    def restore_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        self.loader.generator.set_state(state["loader"])
        self.train_set.rng.bit_generator.state = state["crops"]
        numpy_state = state["numpy"]
        key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
        np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def build_run(
    cfg: dict[str, Any],
    data_dir: str | os.PathLike | None,
    out_dir: Path,
    epochs: int | None,
    seed: int,
    device_name: str,
) -> TrainingRun:
    """Data, model (with the training split's input statistics), loss, EMA, optimiser, schedule."""
    if device_name == "cuda" and not torch.cuda.is_available():
        raise AMNetError("--device cuda asked for, but no CUDA device is available")
    device = torch.device(device_name)
    seed_everything(seed)
    epochs = cfg["opt"]["epochs"] if epochs is None else epochs  # both checked already
    cfg = copy.deepcopy(cfg)
    cfg["opt"]["epochs"] = epochs

    train_set = make_dataset(cfg, data_dir, "train_split", training=True, seed=seed)
    class_names = train_set.class_names
    val_set = None
    if cfg["dataset"]["val_split"]:  # [] trains without validation
        try:
            val_set = make_dataset(
                cfg, data_dir, "val_split", training=False, class_names=class_names
            )
        except AMNetError as exc:
            if "has no videos" not in str(exc):
                raise
            # A misspelt subset would otherwise train without validation, silently: no best.pt.
            raise AMNetError(
                f"{exc}; dataset.val_split names the subsets to validate on (val_split: [] "
                "trains without validation)"
            ) from None
    model = AMNet.from_config(cfg)
    model.set_input_statistics(*feature_statistics(train_set))
    model = model.to(device)
    criterion = AMNetLoss(model, cfg["train_cfg"]).to(device)
    ema = ModelEma(model, cfg["train_cfg"]["ema_decay"])
    optimizer = make_optimizer(model, cfg["opt"])
    loader = training_loader(train_set, cfg["loader"], seed, model.pad_multiple)
    steps_per_epoch = max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(cfg["opt"]["warmup_epochs"] * steps_per_epoch, epochs * steps_per_epoch),
    )
    use_amp = device.type == "cuda" and cfg["train_cfg"]["amp"]
    return TrainingRun(
        cfg, out_dir, device, seed, epochs, class_names, train_set, val_set, model, criterion, ema,
        optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp), loader, use_amp,
    )  # fmt: skip


def training_loader(
    train_set: VideoFeatureDataset, loader_cfg: dict[str, Any], seed: int, pad_multiple: int
) -> DataLoader:
    """Shuffled batches of random crops; the shuffling and each worker's crops follow ``seed``."""
    batch_size = loader_cfg["batch_size"]
    return DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) > batch_size,
        num_workers=fit_to_cpus("loader.num_workers", loader_cfg["num_workers"]),
        generator=torch.Generator().manual_seed(seed),
        collate_fn=functools.partial(collate_videos, pad_multiple=pad_multiple),  # picklable
        worker_init_fn=seed_loader_worker,
    )  # fmt: skip


def seed_loader_worker(worker_id: int) -> None:
    """A loader worker's own crop generator, from the seed the loader drew for it this epoch.
    Otherwise every worker would start from a copy of the dataset's generator, every epoch,
    and draw the same crops as the others."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, VideoFeatureDataset):
        info.dataset.rng = np.random.default_rng(info.seed)


_RESUME_FIELDS = ("ema", "optimizer", "scheduler", "loss_norm", "epoch")


def resume_run(run: TrainingRun, path: str | os.PathLike, seed: int | None = None) -> None:
    """Continue ``run`` from a ``last.pt``: the checkpoint must come from a run of the same
    model, classes and optimiser; anything else is one AMNetError naming what differs. The run
    keeps the checkpoint's seed and random streams; a different ``seed`` is an error."""
    ckpt = read_checkpoint(path)
    if seed is not None and ckpt.get("seed") not in (None, seed):
        raise AMNetError(
            f"{path}: was trained with seed {ckpt['seed']}, not {seed}; a resumed run continues "
            "its own random streams (leave out --seed)"
        )
    missing = [key for key in _RESUME_FIELDS if ckpt.get(key) is None]
    if missing:
        raise AMNetError(
            f"{path}: cannot resume from it (no {', '.join(missing)}); pass the last.pt "
            "of an amnet-train run"
        )
    names = list(ckpt["class_names"])
    if names != run.class_names:
        diff = "another order" if sorted(names) == sorted(run.class_names) else "other classes"
        raise AMNetError(
            f"{path}: was trained on {len(names)} classes, this run's data has "
            f"{len(run.class_names)} ({diff}); resume needs the same class list"
        )
    saved = config_from_dict(ckpt["config"], f"{path} (config)")
    for section in ("model", "dataset"):
        for key, value in run.cfg[section].items():
            if section == "dataset" and key not in (
                "input_dim",
                "num_classes",
                "max_seq_len",
                "force_upsampling",
            ):
                continue  # paths and augmentation may change between sessions
            if saved[section].get(key) != value:
                raise AMNetError(
                    f"{path}: was trained with {section}.{key} = {saved[section].get(key)!r}, "
                    f"this run has {value!r}; resume with the config of that run"
                )
    try:
        run.model.load_state_dict(ckpt["model"])
        run.ema.module.load_state_dict(ckpt["ema"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.criterion.loss_norm.fill_(float(ckpt["loss_norm"]))
        run.start_epoch, run.best_map = int(ckpt["epoch"]), float(ckpt.get("best_map", -1.0))
        run.ema.updates = int(ckpt.get("ema_updates", run.start_epoch * max(1, len(run.loader))))
        if ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng") is not None:
            run.restore_rng_state(ckpt["rng"])
        else:
            log.warning("%s: holds no random state (an older checkpoint); the resumed run "
                        "draws new crops and batches", path)  # fmt: skip
        run.seed = int(ckpt.get("seed", run.seed))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AMNetError(f"{path}: does not match this run ({first[:160]})") from None
    if run.start_epoch < 0:
        raise AMNetError(f"{path}: bad epoch {run.start_epoch}")
    log.info("resumed from %s at epoch %d", path, run.start_epoch)


def train_one_epoch(run: TrainingRun, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the training split; the mean of each loss term."""
    run.model.train()
    run.criterion.train()
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{run.epochs}", unit="batch",
               disable=bar_disabled(progress), leave=False)  # fmt: skip
    try:
        totals, count = _run_batches(run, bar)
    except RuntimeError as exc:
        # torch reports a dead loader worker (the out-of-memory killer's usual victim) as a
        # RuntimeError raised wherever the main process is when it notices.
        if not str(exc).startswith("DataLoader worker"):
            raise
        raise AMNetError(
            f"a data-loading worker process died ({str(exc).rstrip('.')}): out of memory? "
            "Lower loader.num_workers or loader.batch_size; `amnet-train --resume auto` "
            "continues from the last finished epoch"
        ) from None
    return {k: v / max(count, 1) for k, v in totals.items()}


def _run_batches(run: TrainingRun, bar: Any) -> tuple[dict[str, float], int]:
    """The optimiser steps of one epoch; the sum of each loss term and the batch count."""
    totals: dict[str, float] = {}
    count = 0
    for batch in bar:
        feats, lengths = batch["feats"].to(run.device), batch["lengths"].to(run.device)
        with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.use_amp):
            out = run.model(feats, lengths)
        losses = run.criterion(out, batch["segments"], batch["labels"])
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(losses["final_loss"]).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(
            run.model.parameters(), run.cfg["train_cfg"]["clip_grad_l2norm"]
        )
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.ema.update(run.model)
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        count += 1
        bar.set_postfix(loss=f"{float(losses['final_loss'].detach()):.3f}")
    return totals, count


def validate(run: TrainingRun, val_set: VideoFeatureDataset, progress: bool) -> dict[str, float]:
    """Average mAP on the validation split of both weight sets, EMA and raw: best.pt keeps the
    better one and names it, so inference runs what validation chose (EMA is not assumed to win
    on short runs)."""
    return {
        name: evaluate_model(net, val_set, run.cfg, run.device, progress)[1].average_mAP
        for name, net in (("ema", run.ema.module), ("raw", run.model))
    }


def _train(
    cfg: dict[str, Any],
    data_dir: str | os.PathLike | None,
    out_dir: Path,
    epochs: int | None,
    seed: int | None,
    device_name: str,
    resume: str | os.PathLike | None,
    progress: bool,
) -> dict[str, Any]:
    run = build_run(cfg, data_dir, out_dir, epochs, 0 if seed is None else seed, device_name)
    if resume is not None:
        resume_run(run, resume, seed)
    else:  # a new run in a folder with checkpoints: --overwrite said to replace them
        run.replaced = tuple(name for name in CHECKPOINTS if (out_dir / name).exists())
    log.info(
        "training AMNet: %d videos, %d classes, %d epochs, device %s, attention path %s, AMP %s, %.2fM parameters",
        len(run.train_set), len(run.class_names), run.epochs, run.device,
        attention_backend(run.device, run.cfg["model"]["embd_dim"] // run.cfg["model"]["n_heads"]),
        run.use_amp, sum(p.numel() for p in run.model.parameters()) / 1e6,
    )  # fmt: skip
    eval_every = run.cfg["train_cfg"]["eval_every"]
    history: list[dict[str, Any]] = []
    for epoch in range(run.start_epoch, run.epochs):
        started = time.perf_counter()
        means = train_one_epoch(run, epoch, progress)
        if not all(math.isfinite(v) for v in means.values()):
            # Diverged: its weights are NaN. Stop before they become last.pt or best.pt.
            raise AMNetError(
                f"epoch {epoch + 1}: the training loss is {means.get('final_loss')} (diverged; "
                "a lower opt.learning_rate or a longer warm-up may help); checkpoints of the "
                "epochs before are kept"
            )
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "seconds": time.perf_counter() - started,
            **means,
        }
        log.info("epoch %d/%d %.1fs %s", epoch + 1, run.epochs, record["seconds"],
                 " ".join(f"{k}={v:.4f}" for k, v in means.items()))  # fmt: skip
        due = epoch + 1 == run.epochs or (eval_every > 0 and (epoch + 1) % eval_every == 0)
        if run.val_set is not None and due:
            scores = validate(run, run.val_set, progress)
            chosen = max(scores, key=lambda name: (scores[name], name == "ema"))
            record["val_average_mAP"] = scores[chosen]
            record["val_ema_mAP"], record["val_raw_mAP"] = scores["ema"], scores["raw"]
            log.info(
                "epoch %d validation average mAP %.4f (EMA %.4f, raw %.4f)%s",
                epoch + 1, scores[chosen], scores["ema"], scores["raw"],
                # A one-class model is scored on finding actions, whatever their class.
                ", class-agnostic" if len(run.class_names) == 1 else "",
            )  # fmt: skip
            if scores[chosen] > run.best_map:
                run.best_map = scores[chosen]
                run.save("best.pt", epoch + 1, weights=chosen)
        history.append(record)
        run.save("last.pt", epoch + 1)
    if run.epochs == 0 or run.start_epoch >= run.epochs:
        if resume is not None and _same_file(resume, out_dir / "last.pt"):
            log.info("the run has done its %d epochs already; nothing to do", run.start_epoch)
        else:
            run.save("last.pt", run.start_epoch)
    return {
        "out_dir": str(out_dir),
        "history": history,
        "best_map": run.best_map,
        "class_names": run.class_names,
        "version": __version__,
    }
