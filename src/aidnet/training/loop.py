"""The training loop shared by every model (paper §2.4): Adam, batches of pairs (or of single
scans for the baselines), model selection on validation AUC, atomic checkpoints at every epoch
end and every few minutes within an epoch, exact resume after any saved step, mixed precision on
GPUs and several processes through ``torchrun`` (DDP)."""

from __future__ import annotations

import math
import sys
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
from aidnet.data.splits import read_given_splits, read_splits, split_subjects, write_splits
from aidnet.errors import AidnetError
from aidnet.models.registry import HEADED
from aidnet.training.average import WeightAverage
from aidnet.training.checkpoint import cpu_weights, load_checkpoint, save_checkpoint
from aidnet.training.logs import LOSS_PARTS
from aidnet.training.precision import check_bf16, cpu_bf16

#: scans per batch when predicting (validation, evaluation)
PREDICT_BATCH = 4


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
    write: bool = True,
    splits: Path | None = None,
) -> RunData:
    """Read the manifest, split by subject (or reuse the run's saved split), fill the cache.

    ``splits``: a ``subject,split`` file (e.g. another run's ``splits.csv``) to train on instead
    of a new seeded split; a run already saved on another split refuses it.
    ``write=False`` (the other ``torchrun`` processes) only reads what process 0 wrote.
    """
    records = labelled_records(manifest)
    split_file = out / "splits.csv"
    if splits is not None and write:
        given = read_given_splits(splits)
        if not split_file.exists():
            write_splits(split_file, given)
        elif read_splits(split_file) != given:
            raise AidnetError(f"{out}: this run was started on another subject split than {splits}")
    if split_file.exists() or not write:
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
        "head": config.head if config.model in HEADED else None,
        "input_size": list(config.input_size),
        "strategy": config.strategy,
    }


@torch.no_grad()
def predict_items(
    model,
    items: list[Item],
    num_classes: int,
    device: torch.device,
    desc: str | None = None,
    map_sums: list[float] | None = None,
    amp: torch.dtype | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) of single scans through one path of the model; with ``desc``
    a progress bar of that name on a terminal. With ``map_sums`` a list, each scan's sum of its
    map before global average pooling is appended to it. With ``amp`` a dtype, the network runs
    under autocast to it (the probabilities are computed in float32)."""
    from tqdm import tqdm

    from aidnet.evaluation.metrics import class_probs

    model.eval()
    loader = DataLoader(
        ScanDataset(items, num_classes, with_target=False), batch_size=PREDICT_BATCH
    )
    out = []
    bar = tqdm(loader, desc=desc, unit="batch", disable=None if desc else True, leave=False)
    for image, _, _ in bar:
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            single = model.forward_single(image.to(device))
        out.append(class_probs(single.logits).cpu().numpy())
        if map_sums is not None:
            map_sums.extend(single.features.flatten(1).float().sum(1).cpu().tolist())
    return np.concatenate(out) if out else np.zeros((0, num_classes))


def validation_scores(
    model, items: list[Item], config: Config, device, amp: torch.dtype | None = None
) -> tuple[float, float, float]:
    """Validation AUC, accuracy and, for a model whose map is on calcium (the calcium head),
    the share of CAC-positive scans whose map holds any evidence (NaN for other models or
    without such scans). A share of 0 is a dead map: the decision then rests on the attention
    features alone and Grad-CAM has nothing to show. ``amp``: the training's autocast dtype."""
    from aidnet.evaluation.metrics import binary_metrics

    if not items:
        return float("nan"), float("nan"), float("nan")
    sums: list[float] | None = [] if getattr(model, "map_on_calcium", False) else None
    probs = predict_items(model, items, config.num_classes, device, map_sums=sums, amp=amp)
    p_cac = probs[:, 1:].sum(axis=1)
    y = np.array([int((i.record.label or 0) > 0) for i in items])
    metrics = binary_metrics(y, p_cac, n_boot=0)
    auc = metrics["auc"]
    live = float("nan")
    if sums is not None and y.any():
        live = float(np.mean(np.asarray(sums)[y == 1] > 0))
    return (float("nan") if auc is None else float(auc)), float(metrics["accuracy"]), live


def learning_rate(config: Config, epoch: int) -> float:
    """The learning rate of an epoch: constant, or cosine-decayed over the run."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def _check_resumable(state: dict[str, Any], spec: dict, path: Path) -> None:
    saved = dict(state.get("model_spec") or {})
    if saved.get("name") in HEADED:
        saved["head"] = saved.get("head") or "stage"  # saved before the calcium head existed
    keys = ("name", "head", "num_classes", "features", "input_size")
    if any(saved.get(k) != spec.get(k) for k in keys):

        def describe(s: dict) -> str:
            head = f", head {s.get('head')}" if s.get("head") else ""
            return (
                f"{s.get('name')!r} ({s.get('num_classes')} classes{head}, features "
                f"{s.get('features')}, input {s.get('input_size')})"
            )

        raise AidnetError(
            f"{path}: checkpoint of model {describe(saved)} does not match this run's "
            f"{describe(spec)}"
        )
    if "next_epoch" not in state or "optimizer" not in state:
        raise AidnetError(f"{path}: not a resumable checkpoint (use the run's last.pt)")


def _amp_dtype(dev: torch.device, config: Config, warn: bool = True) -> torch.dtype | None:
    """The autocast dtype, None for float32: on GPUs with ``amp``, bfloat16 where the GPU has it
    (no loss scaling needed), else float16; on CPUs with ``cpu_amp``, see :func:`cpu_bf16`."""
    if dev.type == "cuda":
        if not config.amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return cpu_bf16(config.cpu_amp, "cpu_amp", warn) if dev.type == "cpu" else None


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
    splits: Path | None = None,
) -> Path:
    """Train ``config.model`` on the manifest's train split; return the best checkpoint path.

    ``splits``: train on this subject split (see :func:`prepare_data`) instead of a new one.

    Started by ``torchrun``, every process runs this; see :mod:`aidnet.training.distributed`.
    """
    from torch.nn.parallel import DistributedDataParallel

    from aidnet.models.registry import build_model
    from aidnet.training.distributed import start_processes

    last = out / "last.pt"
    if last.exists() and not resume:
        raise AidnetError(f"{out}: a run already exists here; add --resume or choose another --out")
    if resume and not last.exists() and not (out / "config.yaml").exists():
        raise AidnetError(f"{out}: nothing to resume (no last.pt or config.yaml)")
    labelled_records(manifest)  # a bad manifest fails here, before the run folder exists
    if splits is not None:
        read_given_splits(splits)  # and so does a bad split file
    procs, dev = start_processes(device)
    try:

        def setup(main: bool) -> tuple[Config, RunData]:
            cfg = config
            if resume and (out / "config.yaml").exists():
                cfg = read_saved_config(out / "config.yaml")
            elif main:
                out.mkdir(parents=True, exist_ok=True)
                save_config(cfg, out / "config.yaml")
            data = prepare_data(
                cfg,
                manifest,
                out,
                cache_dir=cache_dir,
                workers=workers,
                progress=progress and main,
                write=main,
                splits=splits,
            )
            return cfg, data

        config, data = procs.main_first(setup)
        if procs.main:
            for key, error in data.failures.items():
                print(f"skipped {key}: {error}")
        torch.manual_seed(config.seed)
        model: Any = build_model(
            config.model,
            in_channels=2,
            num_classes=config.num_classes,
            features=config.features,
            dropout=config.dropout,
            head=config.head,
        ).to(dev)
        if getattr(model, "evidence", None) is not None:
            model.evidence.running_evidence = config.evidence_norm == "running"
        net: Any = model
        if procs.distributed:
            if dev.type == "cuda":  # batch statistics over the global batch (not on CPU/gloo)
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        return _fit(config, data, manifest, out, model, net, procs, dev, resume, progress)
    finally:
        procs.close()


def selectable(config: Config, epoch: int) -> bool:
    """Whether ``best.pt`` may be chosen from epoch ``epoch`` (0-based): one after the first
    ``select_from`` of the run's epochs. Early epochs of a high learning rate can peak on a
    small validation split by chance; the later ones are the ones the schedule settles."""
    return epoch + 1 > config.select_from * config.epochs  # never the start value, -1


def _fit(config, data, manifest, out, model, net, procs, dev, resume, progress) -> Path:
    from tqdm import tqdm

    from aidnet.losses import PairLoss, penalty_maps
    from aidnet.training.batches import epoch_batches, step_seed
    from aidnet.training.logs import TrainLog

    siamese = bool(getattr(model, "siamese", False))
    shift = config.max_shift if config.augment else 0
    # a step sees the same number of scans for every model: batch_size pairs, or twice as
    # many single scans for the baselines
    scans_per_pair = 1 if siamese else 2
    if siamese:
        pairs = make_pairs(data.items["train"])
        if not pairs:
            raise AidnetError(f"{manifest}: no training subject has two labelled scans to pair")
        train_set: PairDataset | ScanDataset = PairDataset(
            pairs, config.num_classes, max_shift=shift, seed=config.seed
        )
    else:
        train_set = ScanDataset(
            data.items["train"], config.num_classes, max_shift=shift, seed=config.seed
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    pair_loss = PairLoss(
        lambda_=config.lambda_, margin=config.margin, negative=config.negative_evidence
    )
    ce = torch.nn.CrossEntropyLoss()
    amp_dtype = _amp_dtype(dev, config, warn=procs.main)
    if amp_dtype == torch.bfloat16 and dev.type == "cpu":  # its wrong convolutions in float32
        batch = (scans_per_pair * config.batch_size, 2, *config.input_size)
        check_bf16(model, batch, "cpu_amp", warn=procs.main)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    spec = _model_spec(config)
    last = out / "last.pt"
    # validation, selection and best.pt use the averaged weights when averaging is on
    average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None

    # best epoch so far: one in the selection window first, then a live calcium map (NaN = no
    # calcium map: live), then its score
    start_epoch, start_step, best_auc, best_live, best_epoch = 0, 0, -1.0, False, -1
    totals = dict.fromkeys(LOSS_PARTS, 0.0)
    grad_max = 0.0  # the epoch's largest gradient norm so far (log.csv)
    if resume and last.exists():
        state = load_checkpoint(last)
        _check_resumable(state, spec, last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["next_epoch"]), int(state["next_step"])
        best_auc = float(state["best_auc"])
        best_live = bool(state.get("best_live", True))  # older runs: chosen on score alone
        best_epoch = int(state.get("best_epoch", config.epochs - 1))  # older runs: no window
        if average is not None:
            if not state.get("average"):
                raise AidnetError(f"{last}: saved without the weight average this run uses")
            average.load_state_dict(state["average"])
        totals.update({k: float(v) for k, v in state["totals"].items()})
        grad_max = float(state.get("grad_norm_max", 0.0))
    log = TrainLog(out, enabled=procs.main)

    def checkpoint(next_epoch: int, next_step: int) -> None:
        save_checkpoint(
            last,
            {
                "model": cpu_weights(model),
                "model_spec": spec,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "next_epoch": next_epoch,
                "next_step": next_step,
                "totals": dict(totals),
                "grad_norm_max": grad_max,
                "best_auc": best_auc,
                "best_live": best_live,
                "best_epoch": best_epoch,
                "average": average.state_dict() if average is not None else {},
                "config": config.to_dict(),
            },
        )

    if procs.main and progress and procs.distributed:
        print(
            f"{procs.world} processes × batch {config.batch_size} = "
            f"global batch {procs.world * config.batch_size}"
            + ("" if siamese else " (pairs' worth of single scans)")
        )
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch)
        model.train()
        train_set.set_epoch(epoch)
        try:
            batches = epoch_batches(
                len(train_set),
                scans_per_pair * config.batch_size,
                seed=config.seed,
                epoch=epoch,
                world=procs.world,
                rank=procs.rank,
            )
        except ValueError as exc:
            raise AidnetError(f"{manifest}: {exc}") from None
        first = start_step if epoch == start_epoch else 0
        if first == 0:
            totals = dict.fromkeys(LOSS_PARTS, 0.0)
            grad_max = 0.0
        loader = DataLoader(
            train_set, batch_sampler=batches[first:], num_workers=config.num_workers
        )
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            total=len(batches),
            initial=first,
            leave=False,
            disable=not (progress and procs.main),
        )
        saved_at = time.monotonic()
        for step, batch in enumerate(bar, start=first):
            torch.manual_seed(step_seed(config.seed, epoch, step, procs.rank))
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(
                device_type=dev.type, dtype=amp_dtype, enabled=amp_dtype is not None
            ):
                if siamese:
                    x1, x2, y1, y2 = (t.to(dev, non_blocking=True) for t in batch)
                    o1, o2 = net(x1, x2)
                    maps = penalty_maps(model, o1, o2)
                    loss, parts = pair_loss(o1.logits.float(), o2.logits.float(), y1, y2, *maps)
                else:
                    x, y, _ = (t.to(dev, non_blocking=True) for t in batch)
                    loss = ce(net(x)[0].logits.float(), y)
                    parts = {"ce": float(loss.detach())}
            if not bool(torch.isfinite(loss.detach())):
                raise AidnetError(
                    f"{out}: training diverged (loss is {float(loss.detach())}) at epoch "
                    f"{epoch + 1}"
                )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # true gradients for the norm (a no-op without scaling)
            clip = config.grad_clip if config.grad_clip > 0 else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            grad_max = max(grad_max, norm) if math.isfinite(norm) else grad_max
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update(model)
            totals["loss"] += float(loss.detach())
            for key in LOSS_PARTS[1:]:
                totals[key] += float(parts.get(key, 0.0))
            done = step + 1
            bar.set_postfix(loss=f"{totals['loss'] / done:.3f}")
            log.step(epoch * len(batches) + step, float(loss.detach()))
            due = (
                config.checkpoint_steps > 0 and done % config.checkpoint_steps == 0
            ) or time.monotonic() - saved_at > 60 * config.checkpoint_minutes
            if due and done < len(batches):
                if procs.main:
                    checkpoint(epoch, done)
                saved_at = time.monotonic()
        bar.close()
        steps = max(len(batches), 1)
        improved, val_auc, val_acc, live = False, float("nan"), float("nan"), float("nan")
        if procs.main:
            scored = average.module if average is not None else model
            val_auc, val_acc, live = validation_scores(
                scored, data.items["val"], config, dev, amp_dtype
            )
            score = val_auc if np.isfinite(val_auc) else (val_acc if np.isfinite(val_acc) else 0.0)
            alive = live != 0.0
            # AUCs equal as rank statistics can differ in the last bits of their floating-point
            # sums: such a tie keeps the earlier epoch on every machine
            improved = (selectable(config, epoch), alive, round(score, 9)) > (
                selectable(config, best_epoch),
                best_live,
                round(best_auc, 9),
            )
            if improved:
                best_auc, best_live, best_epoch = score, alive, epoch
                save_checkpoint(
                    out / "best.pt",
                    {
                        "model": cpu_weights(scored),
                        "model_spec": spec,
                        "epoch": epoch,
                        "weights": "average" if average is not None else "last step",
                        "val_auc": val_auc,
                        "config": config.to_dict(),
                    },
                )
            checkpoint(epoch + 1, 0)
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                **{k: totals[k] / steps for k in LOSS_PARTS},
                "grad_norm_max": grad_max,
                "val_auc": val_auc,
                "val_accuracy": val_acc,
                "val_map_live": live,
                "seconds": time.perf_counter() - t0,
            }
            log.epoch(row)
            if progress:
                print(
                    f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.3f}  "
                    f"val AUC {val_auc:.3f}  val acc {val_acc:.3f}"
                    + (f"  map live {live:.2f}" if np.isfinite(live) else "")
                    + f"  ({row['seconds']:.1f} s)"
                    + ("  *best*" if improved else "")
                )
        procs.barrier()
    log.close()
    if procs.main and not best_live:
        print(
            f"warning: {out}: the selected model's calcium map is zero on every CAC-positive "
            "validation scan (its heat maps will be empty); train again with another --seed",
            file=sys.stderr,
        )
    return out / "best.pt"
