"""Training: AdamW, linear warm-up then cosine, gradient clipping, model EMA, AMP on CUDA."""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from amnet import __version__
from amnet.checkpoint import read_checkpoint, save_checkpoint
from amnet.console import bar_disabled
from amnet.data import VideoFeatureDataset, collate_videos
from amnet.errors import AMNetError
from amnet.fileio import load_features
from amnet.inference import detect_dataset
from amnet.kernels import attention_backend
from amnet.model import AMNet, AMNetLoss

log = logging.getLogger(__name__)


class ModelEma:
    """Exponential moving average of a model's parameters and buffers, with a warm-up.

    The decay at update ``n`` is ``min(decay, (1 + n) / (10 + n))``: a fixed 0.999 over a run
    of ~800 steps would keep ~45% of the random initialisation in the average, while the
    warm-up lets the average follow the model early and settle at ``decay`` after ~10,000
    steps (it reaches 0.99 after ~900).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
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
        for ema_v, v in zip(
            self.module.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1.0 - decay)
            else:
                ema_v.copy_(v)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_data_paths(
    cfg: Mapping[str, Any], data_dir: str | os.PathLike | None
) -> tuple[Path, Path]:
    """Annotation file and feature folder: config values, relative to ``data_dir`` when given."""
    base = Path(data_dir) if data_dir is not None else Path(".")
    ann = cfg["dataset"]["annotation_file"] or "annotations.json"
    feats = cfg["dataset"]["feature_folder"] or "features"
    ann_path, feat_path = base / ann, base / feats
    if data_dir is None and cfg["dataset"]["annotation_file"] is None:
        raise AMNetError("no data: pass --data DIR or set dataset.annotation_file in the config")
    if not ann_path.is_file():
        raise AMNetError(f"{ann_path}: annotation file not found")
    if not feat_path.is_dir():
        raise AMNetError(f"{feat_path}: feature folder not found")
    return ann_path, feat_path


def make_dataset(
    cfg: Mapping[str, Any],
    data_dir: str | os.PathLike | None,
    split: str,
    training: bool,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> VideoFeatureDataset:
    ann, feats = resolve_data_paths(cfg, data_dir)
    d = cfg["dataset"]
    dataset = VideoFeatureDataset(
        ann, feats, d[split], is_training=training, input_dim=d["input_dim"], max_seq_len=d["max_seq_len"],
        feature_stride=d["feature_stride"], num_frames=d["num_frames"], default_fps=d["default_fps"],
        trunc_thresh=d["trunc_thresh"], crop_ratio=d["crop_ratio"] if training else None,
        class_names=class_names, file_ext=d["file_ext"], seed=seed,
    )  # fmt: skip
    if class_names is None and len(dataset.class_names) < d["num_classes"]:
        # Ids past the largest one present (classes absent from a small split) keep a placeholder
        # name, so the model still has the configured number of outputs.
        dataset.class_names += [
            f"class_{i}" for i in range(len(dataset.class_names), d["num_classes"])
        ]
    if len(dataset.class_names) != d["num_classes"]:
        raise AMNetError(
            f"{ann}: {len(dataset.class_names)} classes in the annotations, the config says dataset.num_classes={d['num_classes']}"
        )
    return dataset


def has_split(cfg: Mapping[str, Any], data_dir: str | os.PathLike | None, split: str) -> bool:
    try:
        make_dataset(cfg, data_dir, split, training=False)
    except AMNetError as exc:
        if "has no videos" in str(exc):
            return False
        raise
    return True


def feature_statistics(
    dataset: VideoFeatureDataset, max_videos: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over the snippets of (up to) ``max_videos`` videos."""
    total, total_sq, count = None, None, 0
    step = max(1, len(dataset) // max_videos)
    for index in range(0, len(dataset), step):
        feats = load_features(
            dataset.feature_path(dataset.videos[index].video_id), dataset.input_dim
        ).astype(np.float64)
        total = feats.sum(0) if total is None else total + feats.sum(0)
        total_sq = (feats**2).sum(0) if total_sq is None else total_sq + (feats**2).sum(0)
        count += feats.shape[0]
    if not count:
        raise AMNetError("the training split has no snippets")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases, norms or scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def evaluate_model(
    model: torch.nn.Module,
    dataset: VideoFeatureDataset,
    cfg: Mapping[str, Any],
    device: torch.device,
    progress: bool = True,
):
    """Detections and the ActivityNet metric of ``model`` on ``dataset``."""
    from amnet.metrics import evaluate_detection

    items = (dataset[i] for i in range(len(dataset)))
    detections = detect_dataset(model, items, cfg, device, progress=progress, total=len(dataset))
    gt = {v.video_id: v for v in dataset.videos}
    result = evaluate_detection(
        gt, detections, dataset.class_names, cfg["test_cfg"]["tiou_thresholds"]
    )
    return detections, result


def train(
    cfg: dict[str, Any],
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train AMNet; writes ``last.pt`` (and ``best.pt`` when validating) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("amnet")
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        return _train(cfg, data_dir, out_dir, epochs, seed, device, resume, progress)
    finally:
        logging.getLogger("amnet").removeHandler(handler)
        handler.close()


def _train(
    cfg, data_dir, out_dir: Path, epochs, seed, device_name, resume, progress
) -> dict[str, Any]:
    if device_name == "cuda" and not torch.cuda.is_available():
        raise AMNetError("--device cuda asked for, but no CUDA device is available")
    device = torch.device(device_name)
    seed_everything(seed)
    epochs = cfg["opt"]["epochs"] if epochs is None else epochs
    if epochs < 0:
        raise AMNetError("--epochs must be >= 0")
    cfg = copy.deepcopy(cfg)
    cfg["opt"]["epochs"] = epochs

    train_set = make_dataset(cfg, data_dir, "train_split", training=True, seed=seed)
    class_names = train_set.class_names
    val_set = (
        make_dataset(cfg, data_dir, "val_split", training=False, class_names=class_names)
        if has_split(cfg, data_dir, "val_split")
        else None
    )

    model = AMNet.from_config(cfg)
    model.set_input_statistics(*feature_statistics(train_set))
    model = model.to(device)
    criterion = AMNetLoss(model, cfg["train_cfg"]).to(device)
    ema = ModelEma(model, cfg["train_cfg"]["ema_decay"])
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg["opt"]["weight_decay"]), lr=cfg["opt"]["learning_rate"]
    )
    generator = torch.Generator().manual_seed(seed)
    pad = model.pad_multiple
    loader = DataLoader(
        train_set, batch_size=cfg["loader"]["batch_size"], shuffle=True, drop_last=len(train_set) > cfg["loader"]["batch_size"],
        num_workers=cfg["loader"]["num_workers"], collate_fn=lambda items: collate_videos(items, pad), generator=generator,
    )  # fmt: skip
    steps_per_epoch = max(1, len(loader))
    warmup = cfg["opt"]["warmup_epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup, epochs * steps_per_epoch)
    )
    use_amp = device.type == "cuda" and cfg["train_cfg"]["amp"]
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_map, history = 0, -1.0, []
    if resume is not None:
        ckpt = read_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        ema.module.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        criterion.loss_norm.fill_(float(ckpt["loss_norm"]))
        start_epoch, best_map = int(ckpt["epoch"]), float(ckpt.get("best_map", -1.0))
        ema.updates = int(ckpt.get("ema_updates", start_epoch * steps_per_epoch))
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    log.info(
        "training AMNet: %d videos, %d classes, %d epochs, device %s, attention path %s, AMP %s, %.2fM parameters",
        len(train_set), len(class_names), epochs, device,
        attention_backend(device, cfg["model"]["embd_dim"] // cfg["model"]["n_heads"]), use_amp,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )  # fmt: skip

    def checkpoint(name: str, epoch: int, weights: str = "ema") -> None:
        save_checkpoint(
            out_dir / name, config=cfg, class_names=class_names, model=model.state_dict(), ema=ema.module.state_dict(),
            ema_updates=ema.updates, weights=weights, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            loss_norm=float(criterion.loss_norm), epoch=epoch, best_map=best_map, seed=seed,
        )  # fmt: skip

    eval_every = cfg["train_cfg"]["eval_every"]
    for epoch in range(start_epoch, epochs):
        model.train()
        criterion.train()
        started, totals, count = time.perf_counter(), {}, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=bar_disabled(progress),
            leave=False,
        )
        for batch in bar:
            feats, lengths = batch["feats"].to(device), batch["lengths"].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(feats, lengths)
            losses = criterion(out, batch["segments"], batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["final_loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train_cfg"]["clip_grad_l2norm"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema.update(model)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            count += 1
            bar.set_postfix(loss=f"{float(losses['final_loss'].detach()):.3f}")
        means = {k: v / max(count, 1) for k, v in totals.items()}
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "seconds": time.perf_counter() - started,
            **means,
        }
        log.info(
            "epoch %d/%d %.1fs %s",
            epoch + 1,
            epochs,
            record["seconds"],
            " ".join(f"{k}={v:.4f}" for k, v in means.items()),
        )
        last_epoch = epoch + 1 == epochs
        if val_set is not None and (
            last_epoch or (eval_every > 0 and (epoch + 1) % eval_every == 0)
        ):
            # Both weight sets are scored; best.pt keeps the better of them and names it, so
            # inference runs what validation chose (EMA is not assumed to win on short runs).
            scores = {
                name: evaluate_model(net, val_set, cfg, device, progress)[1].average_mAP
                for name, net in (("ema", ema.module), ("raw", model))
            }
            chosen = max(scores, key=lambda name: (scores[name], name == "ema"))
            record["val_average_mAP"] = scores[chosen]
            record["val_ema_mAP"], record["val_raw_mAP"] = scores["ema"], scores["raw"]
            log.info(
                "epoch %d validation average mAP %.4f (EMA %.4f, raw %.4f)",
                epoch + 1, scores[chosen], scores["ema"], scores["raw"],
            )  # fmt: skip
            if scores[chosen] > best_map:
                best_map = scores[chosen]
                checkpoint("best.pt", epoch + 1, weights=chosen)
        history.append(record)
        checkpoint("last.pt", epoch + 1)
    if epochs == 0 or start_epoch >= epochs:
        checkpoint("last.pt", start_epoch)
    return {
        "out_dir": str(out_dir),
        "history": history,
        "best_map": best_map,
        "class_names": class_names,
        "version": __version__,
    }
