"""The training loop shared by every model (paper §2.4): Adam, batch of pairs, model selection
on validation AUC, an atomic checkpoint every epoch, resumable at epoch boundaries."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from aidnet.config import Config, read_saved_config, save_config
from aidnet.data.cache import preprocess_cohort
from aidnet.data.datasets import Item, PairDataset, ScanDataset, make_pairs
from aidnet.data.manifest import ScanRecord, read_manifest
from aidnet.data.splits import read_splits, split_subjects, write_splits
from aidnet.errors import AidnetError
from aidnet.training.checkpoint import load_checkpoint, save_checkpoint

LOG_COLUMNS = ["epoch", "loss", "ce", "contrastive", "val_auc", "val_accuracy", "seconds"]


@dataclass
class RunData:
    """A run's scans by split, each with its cache file."""

    records: list[ScanRecord]
    assignment: dict[str, str]
    items: dict[str, list[Item]]
    failures: dict[str, str]


def labelled_records(manifest: Path) -> list[ScanRecord]:
    """The manifest's scans that have an Agatston score (validated; fails before any output)."""
    records = [r for r in read_manifest(manifest) if r.agatston is not None]
    if not records:
        raise AidnetError(f"{manifest}: no scan has an agatston score; nothing to train on")
    return records


def prepare_data(
    config: Config,
    manifest: Path,
    out: Path,
    *,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> RunData:
    """Read the manifest, split by subject (or reuse the run's saved split), fill the cache."""
    records = labelled_records(manifest)
    split_file = out / "splits.csv"
    if split_file.exists():
        assignment = read_splits(split_file)
        unknown = sorted({r.subject for r in records} - set(assignment))
        if unknown:
            raise AidnetError(
                f"{split_file}: subjects {', '.join(unknown[:5])} are not in the saved split; "
                "the manifest changed since this run started"
            )
    else:
        assignment = split_subjects(
            records,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
        )
        write_splits(split_file, assignment)
    cached = preprocess_cohort(
        records, cache_dir or out / "cache", config.input_size, workers=workers, progress=progress
    )
    done, failures = cached.done, cached.failures
    items: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for record in records:
        if record.key in done:
            items[assignment[record.subject]].append(Item(record, done[record.key]))
    return RunData(records, assignment, items, failures)


def _model_spec(config: Config) -> dict:
    return {
        "name": config.model,
        "in_channels": 2,
        "num_classes": config.num_classes,
        "features": list(config.features),
        "dropout": config.dropout,
        "input_size": list(config.input_size),
        "strategy": config.strategy,
    }


@torch.no_grad()
def predict_items(model, items: list[Item], num_classes: int, device: torch.device) -> np.ndarray:
    """Class probabilities (N, C) of single scans through one path of the model."""
    from aidnet.evaluation.metrics import class_probs

    model.eval()
    loader = DataLoader(ScanDataset(items, num_classes, with_target=False), batch_size=4)
    out = []
    for image, _, _ in loader:
        out.append(class_probs(model.forward_single(image.to(device)).logits).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, num_classes))


def validation_scores(model, items: list[Item], config: Config, device) -> tuple[float, float]:
    from aidnet.evaluation.metrics import binary_metrics

    if not items:
        return float("nan"), float("nan")
    probs = predict_items(model, items, config.num_classes, device)
    p_cac = probs[:, 1:].sum(axis=1)
    y = np.array([int((i.record.label or 0) > 0) for i in items])
    metrics = binary_metrics(y, p_cac, n_boot=0)
    auc = metrics["auc"]
    return (float("nan") if auc is None else float(auc)), float(metrics["accuracy"])


def learning_rate(config: Config, epoch: int) -> float:
    """The learning rate of an epoch: constant, or cosine-decayed over the run."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def _pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(
    config: Config,
    manifest: Path,
    out: Path,
    *,
    resume: bool = False,
    cache_dir: Path | None = None,
    workers: int = 1,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Train ``config.model`` on the manifest's train split; return the best checkpoint path."""
    from tqdm import tqdm

    from aidnet.losses import PairLoss
    from aidnet.models.registry import build_model

    last = out / "last.pt"
    if last.exists() and not resume:
        raise AidnetError(f"{out}: a run already exists here; add --resume or choose another --out")
    if resume and not last.exists():
        raise AidnetError(f"{out}: nothing to resume (no last.pt)")
    labelled_records(manifest)  # a bad manifest fails here, before the run folder exists
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        config = read_saved_config(out / "config.yaml")
    else:
        save_config(config, out / "config.yaml")

    data = prepare_data(
        config, manifest, out, cache_dir=cache_dir, workers=workers, progress=progress
    )
    for key, error in data.failures.items():
        print(f"skipped {key}: {error}")
    torch.manual_seed(config.seed)
    dev = _pick_device(device)
    model: Any = build_model(
        config.model,
        in_channels=2,
        num_classes=config.num_classes,
        features=config.features,
        dropout=config.dropout,
    ).to(dev)
    siamese = bool(getattr(model, "siamese", False))
    if siamese:
        pairs = make_pairs(data.items["train"])
        if not pairs:
            raise AidnetError(f"{manifest}: no training subject has two labelled scans to pair")
        train_set: PairDataset | ScanDataset = PairDataset(
            pairs,
            config.num_classes,
            max_shift=config.max_shift if config.augment else 0,
            seed=config.seed,
        )
    else:
        train_set = ScanDataset(
            data.items["train"],
            config.num_classes,
            max_shift=config.max_shift if config.augment else 0,
            seed=config.seed,
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    pair_loss = PairLoss(lambda_=config.lambda_, margin=config.margin)
    ce = torch.nn.CrossEntropyLoss()
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_auc = 0, -1.0
    if resume:
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_auc = int(state["epoch"]) + 1, float(state["best_auc"])
    log_path = out / "log.csv"
    if not log_path.exists():
        with log_path.open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(LOG_COLUMNS)

    spec = _model_spec(config)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout etc.: resumable per epoch
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch)
        model.train()
        train_set.set_epoch(epoch)
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=config.num_workers,
            drop_last=len(train_set) > config.batch_size,
        )
        totals = {"loss": 0.0, "ce": 0.0, "contrastive": 0.0}
        steps = 0
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress
        )
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=dev.type, enabled=use_amp):
                if siamese:
                    x1, x2, y1, y2 = (t.to(dev) for t in batch)
                    o1, o2 = model(x1, x2)
                    loss, parts = pair_loss(o1.logits, o2.logits, y1, y2)
                else:
                    x, y, _ = (t.to(dev) for t in batch)
                    loss = ce(model.forward_single(x).logits, y)
                    parts = {"ce": float(loss.detach()), "contrastive": 0.0}
            if not bool(torch.isfinite(loss.detach())):
                raise AidnetError(
                    f"{out}: training diverged (loss is {float(loss)}) at epoch {epoch + 1}"
                )
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            totals["loss"] += float(loss.detach())
            totals["ce"] += float(parts.get("ce", 0.0))
            totals["contrastive"] += float(parts.get("contrastive", 0.0))
            steps += 1
            bar.set_postfix(loss=f"{totals['loss'] / steps:.3f}")
        bar.close()
        val_auc, val_acc = validation_scores(model, data.items["val"], config, dev)
        score = val_auc if np.isfinite(val_auc) else (val_acc if np.isfinite(val_acc) else 0.0)
        improved = score > best_auc
        if improved:
            best_auc = score
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if improved:
            save_checkpoint(
                out / "best.pt",
                {
                    "model": weights,
                    "model_spec": spec,
                    "epoch": epoch,
                    "val_auc": val_auc,
                    "config": config.to_dict(),
                },
            )
        save_checkpoint(
            last,
            {
                "model": weights,
                "model_spec": spec,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_auc": best_auc,
                "config": config.to_dict(),
            },
        )
        row = [epoch + 1] + [
            round(totals[k] / max(steps, 1), 5) for k in ("loss", "ce", "contrastive")
        ]
        row += [round(val_auc, 4), round(val_acc, 4), round(time.perf_counter() - t0, 1)]
        with log_path.open("a", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(row)
        if progress:
            print(
                f"epoch {epoch + 1}/{config.epochs}: loss {row[1]:.3f}  val AUC {val_auc:.3f}"
                f"  val acc {val_acc:.3f}  ({row[-1]} s)" + ("  *best*" if improved else "")
            )
    return out / "best.pt"
