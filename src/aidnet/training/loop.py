"""The training loop shared by every model (paper §2.4): Adam, batches of pairs (or of single
scans for the baselines), model selection on validation AUC, atomic checkpoints at every epoch
end and every few minutes within an epoch, exact resume after any saved step, mixed precision on
GPUs and several processes through ``torchrun`` (DDP)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from aidnet.config import Config, read_saved_config, save_config
from aidnet.data.cache import preprocess_cohort, record_cache_dir
from aidnet.data.datasets import Item, PairDataset, ScanDataset, make_pairs
from aidnet.data.manifest import ScanRecord, read_manifest
from aidnet.data.splits import read_given_splits, read_splits, split_subjects, write_splits
from aidnet.errors import AidnetError
from aidnet.models.base import CACNet
from aidnet.models.registry import HEADED
from aidnet.preprocess.config import LATER_OPTIONS, for_training
from aidnet.training.average import WeightAverage
from aidnet.training.batches import BatchList
from aidnet.training.checkpoint import (
    cpu_weights,
    load_checkpoint,
    save_checkpoint,
    spec_defaults,
)
from aidnet.training.distributed import Processes
from aidnet.training.guard import Guard, GuardEvent
from aidnet.training.logs import LOSS_PARTS
from aidnet.training.precision import check_bf16, cpu_bf16
from aidnet.training.validation import validation_scores


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
        records,
        cache_dir or out / "cache",
        for_training(config),
        workers=workers,
        progress=progress,
    )
    done, failures = cached.done, cached.failures
    items: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for record in records:
        if record.key in done:
            items[assignment[record.subject]].append(Item(record, done[record.key]))
    return RunData(records, assignment, items, failures)


def model_for(config: Config) -> CACNet:
    """A new network of the configuration (on the CPU, initialised from torch's seed)."""
    from aidnet.models.registry import build_model

    return build_model(
        config.model,
        in_channels=2,
        num_classes=config.num_classes,
        features=config.features,
        dropout=config.dropout,
        head=config.head,
        evidence_norm=config.evidence_norm,
        evidence_pool=config.evidence_pool,
    )


def model_spec(config: Config) -> dict:
    """What a checkpoint says of its network (checked on resume, used to rebuild it)."""
    return {
        "name": config.model,
        "in_channels": 2,
        "num_classes": config.num_classes,
        "features": list(config.features),
        "dropout": config.dropout,
        "head": config.head if config.model in HEADED else None,
        "evidence_pool": config.evidence_pool if config.model in HEADED else None,
        "input_size": list(config.input_size),
        "strategy": config.strategy,
        **{name: bool(getattr(config, name)) for name in LATER_OPTIONS},
    }


def learning_rate(config: Config, epoch: int, scale: float = 1.0) -> float:
    """The learning rate of an epoch: constant, or cosine-decayed over the run; ``scale`` is
    the training guard's reduction after its recoveries (1: none)."""
    if config.lr_schedule == "cosine":
        return scale * config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return scale * config.lr


def _check_resumable(state: dict[str, Any], spec: dict, path: Path) -> None:
    saved, spec = spec_defaults(state.get("model_spec") or {}), spec_defaults(spec)
    keys = ("name", "head", "evidence_pool", "num_classes", "features", "input_size")
    if any(saved.get(k) != spec.get(k) for k in keys):

        def describe(s: dict) -> str:
            head = f", head {s.get('head')}" if s.get("head") else ""
            if s.get("evidence_pool") not in (None, "sum"):
                head += f", evidence {s.get('evidence_pool')}"
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


@dataclass(frozen=True)
class RunInputs:
    """What a run reads and where it writes: the manifest, the run folder, the cache folder
    (None: ``out/cache``) and its preprocessing processes, whether to show progress, and a
    given subject split (see :func:`prepare_data`)."""

    manifest: Path
    out: Path
    cache_dir: Path | None = None
    workers: int = 1
    progress: bool = True
    splits: Path | None = None


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
    from aidnet.training.distributed import start_processes

    run = RunInputs(manifest, out, cache_dir, workers, progress, splits)
    _check_inputs(run, resume)
    procs, dev = start_processes(device)
    try:
        config, data = procs.main_first(partial(_setup_run, run, config, resume))
        if procs.main:
            for key, error in data.failures.items():
                print(f"skipped {key}: {error}")
        torch.manual_seed(config.seed)
        if dev.type == "cuda":  # one input size for the whole run: let cuDNN pick its kernels
            torch.backends.cudnn.benchmark = True
        model, net = _networks(config, procs, dev)
        return Trainer(config, data, run, model=model, net=net, procs=procs, dev=dev).fit(resume)
    finally:
        procs.close()


def _check_inputs(run: RunInputs, resume: bool) -> None:
    """What can be wrong with the run folder, the manifest or a given split fails here, before
    the run folder is written."""
    last = run.out / "last.pt"
    if last.exists() and not resume:
        raise AidnetError(
            f"{run.out}: a run already exists here; add --resume or choose another --out"
        )
    if resume and not last.exists() and not (run.out / "config.yaml").exists():
        raise AidnetError(f"{run.out}: nothing to resume (no last.pt or config.yaml)")
    labelled_records(run.manifest)
    if run.splits is not None:
        read_given_splits(run.splits)


def _setup_run(run: RunInputs, config: Config, resume: bool, main: bool) -> tuple[Config, RunData]:
    """The run's configuration (the saved one when resuming) and its data. Process 0
    (``main``) writes ``config.yaml``, the split and the cache; the others read them."""
    out = run.out
    if resume and (out / "config.yaml").exists():
        config = read_saved_config(out / "config.yaml")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    data = prepare_data(
        config,
        run.manifest,
        out,
        cache_dir=run.cache_dir,
        workers=run.workers,
        progress=run.progress and main,
        write=main,
        splits=run.splits,
    )
    if main:  # evaluate/explain of this run find its cache
        record_cache_dir(out, run.cache_dir or out / "cache")
    return config, data


def _networks(config: Config, procs: Processes, dev: torch.device) -> tuple[CACNet, Any]:
    """A new network of the configuration on ``dev`` (from torch's seed), and what the steps
    call: the network itself, or under ``torchrun`` its DistributedDataParallel wrapper (with
    batch statistics over the global batch on GPUs)."""
    from torch.nn.parallel import DistributedDataParallel

    model = model_for(config).to(dev)
    if not procs.distributed:
        return model, model
    if dev.type == "cuda":  # batch statistics over the global batch (not on CPU/gloo)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    return model, net


def selectable(config: Config, epoch: int) -> bool:
    """Whether ``best.pt`` may be chosen from epoch ``epoch`` (0-based): one after the first
    ``select_from`` of the run's epochs. Early epochs of a high learning rate can peak on a
    small validation split by chance; the later ones are the ones the schedule settles."""
    return epoch + 1 > config.select_from * config.epochs  # never the start value, -1


def is_better(
    config: Config, epoch: int, live: bool, score: float, best: tuple[int, bool, float]
) -> bool:
    """The model-selection rule: whether epoch ``epoch`` (a live calcium map or not, its
    validation score) beats ``best`` = (epoch, live, score) for ``best.pt``. An epoch in the
    selection window first, then a live map, then the score. AUCs equal as rank statistics can
    differ in the last bits of their floating-point sums: such a tie keeps the earlier epoch
    on every machine."""
    best_epoch, best_live, best_score = best
    return (selectable(config, epoch), live, round(score, 9)) > (
        selectable(config, best_epoch),
        best_live,
        round(best_score, 9),
    )


@dataclass
class TrainState:
    """Where a run stands; saved in ``last.pt`` so a resume continues exactly."""

    next_epoch: int = 0
    next_step: int = 0
    best_auc: float = -1.0
    best_live: bool = False
    best_epoch: int = -1
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_PARTS, 0.0))
    grad_max: float = 0.0  # the epoch's largest gradient norm so far (log.csv)
    lr_scale: float = 1.0  # the guard's reduction of the learning rate
    recoveries: int = 0
    live_seen: bool = False  # a validation pass found a live calcium map

    def to_dict(self) -> dict[str, Any]:
        return {
            "next_epoch": self.next_epoch,
            "next_step": self.next_step,
            "best_auc": self.best_auc,
            "best_live": self.best_live,
            "best_epoch": self.best_epoch,
            "totals": dict(self.totals),
            "grad_norm_max": self.grad_max,
            "lr_scale": self.lr_scale,
            "recoveries": self.recoveries,
            "live_seen": self.live_seen,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], epochs: int) -> TrainState:
        totals = dict.fromkeys(LOSS_PARTS, 0.0)
        totals.update({k: float(v) for k, v in state["totals"].items()})
        return cls(
            next_epoch=int(state["next_epoch"]),
            next_step=int(state["next_step"]),
            best_auc=float(state["best_auc"]),
            best_live=bool(state.get("best_live", True)),  # older runs: chosen on score alone
            best_epoch=int(state.get("best_epoch", epochs - 1)),  # older runs: no window
            totals=totals,
            grad_max=float(state.get("grad_norm_max", 0.0)),
            lr_scale=float(state.get("lr_scale", 1.0)),
            recoveries=int(state.get("recoveries", 0)),
            live_seen=bool(state.get("live_seen", False)),
        )


class Trainer:
    """One run's training: the state, one step, one epoch, one validation pass, the guard's
    recoveries and the checkpoints (``last.pt`` at every epoch end and every few minutes,
    ``good.pt`` at the end of every epoch the guard passed, ``best.pt`` as selected)."""

    def __init__(
        self,
        config: Config,
        data: RunData,
        run: RunInputs,
        *,
        model: CACNet,
        net: Any,
        procs: Processes,
        dev: torch.device,
    ) -> None:
        from aidnet.losses import PairLoss

        self.config, self.data, self.run = config, data, run
        self.manifest, self.out, self.progress = run.manifest, run.out, run.progress
        self.model, self.net, self.procs, self.dev = model, net, procs, dev
        self.siamese, self.calcium = model.siamese, model.map_on_calcium
        # a step sees the same number of scans for every model: batch_size pairs, or twice as
        # many single scans for the baselines
        self.scans_per_pair = 1 if self.siamese else 2
        self.train_set = self._train_set()
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.pair_loss = PairLoss(
            lambda_=config.lambda_,
            margin=config.margin,
            negative=config.negative_evidence,
            relative=config.negative_mode == "relative",
        )
        self.amp = _amp_dtype(dev, config, warn=procs.main)
        if self.amp == torch.bfloat16 and dev.type == "cpu":  # its wrong convolutions in float32
            batch = (self.scans_per_pair * config.batch_size, 2, *config.input_size)
            check_bf16(model, batch, "cpu_amp", warn=procs.main)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.spec = model_spec(config)
        # validation, selection and best.pt use the averaged weights when averaging is on
        self.average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        self.guard = Guard(config.num_classes)
        self.state = TrainState()
        self.last, self.good = self.out / "last.pt", self.out / "good.pt"
        self.epoch_steps = 0
        self.event_step = 0  # the step of the guard's last event
        # one loader for the whole run (workers that outlive an epoch); each epoch sets the
        # sampler's batches of (epoch, index) keys
        self.sampler = BatchList()
        self.loader = self._loader()

    def _train_set(self) -> PairDataset | ScanDataset:
        """The training split as scan–rescan pairs (Siamese models) or single scans."""
        config, items = self.config, self.data.items["train"]
        make: type[PairDataset] | type[ScanDataset] = ScanDataset
        data: list = items
        if self.siamese:
            make, data = PairDataset, make_pairs(items)
            if not data:
                raise AidnetError(
                    f"{self.manifest}: no training subject has two labelled scans to pair"
                )
        return make(
            data,
            config.num_classes,
            max_shift=config.max_shift if config.augment else 0,
            seed=config.seed,
            intensity=config.augment and config.augment_intensity,
            posture=config.augment and config.augment_posture,
        )

    def _loader(self) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.dev.type == "cuda",
        )

    # -- checkpoints -------------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        save_checkpoint(
            path,
            {
                "model": cpu_weights(self.model),
                "model_spec": self.spec,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                **self.state.to_dict(),
                "guard": self.guard.state_dict(),
                "average": self.average.state_dict() if self.average is not None else {},
                "config": self.config.to_dict(),
            },
        )

    def _load(self, path: Path) -> dict[str, Any]:
        state = load_checkpoint(path)
        _check_resumable(state, self.spec, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            if not state.get("average"):
                raise AidnetError(f"{path}: saved without the weight average this run uses")
            self.average.load_state_dict(state["average"])
        self.guard.load_state_dict(state.get("guard") or {})
        return state

    def _save_best(self, epoch: int, val_auc: float) -> None:
        scored = self.average.module if self.average is not None else self.model
        save_checkpoint(
            self.out / "best.pt",
            {
                "model": cpu_weights(scored),
                "model_spec": self.spec,
                "epoch": epoch,
                "weights": "average" if self.average is not None else "last step",
                "val_auc": val_auc,
                "config": self.config.to_dict(),
            },
        )

    # -- the run -------------------------------------------------------------------------------

    def fit(self, resume: bool) -> Path:
        from aidnet.training.logs import TrainLog

        config, procs = self.config, self.procs
        if resume and self.last.exists():
            self.state = TrainState.from_dict(self._load(self.last), config.epochs)
        if procs.main and not self.good.exists():
            self._save(self.good)  # the guard's first place to go back to
        self.log = TrainLog(self.out, enabled=procs.main)
        if procs.main and self.progress and procs.distributed:
            print(
                f"{procs.world} processes × batch {config.batch_size} = "
                f"global batch {procs.world * config.batch_size}"
                + ("" if self.siamese else " (pairs' worth of single scans)")
            )
        while self.state.next_epoch < config.epochs:
            epoch = self.state.next_epoch
            t0 = time.perf_counter()
            event = self._train_epoch(epoch)
            where = f"epoch {epoch + 1} step {self.event_step + 1}"
            if event is None:
                event = self._end_epoch(epoch, t0)
                where = f"epoch {epoch + 1} validation"
            if event is not None:
                self._recover(where, event)
            procs.barrier()
        self.log.close()
        if procs.main and not self.state.best_live:
            print(
                f"warning: {self.out}: the selected model's calcium map is zero on every "
                "CAC-positive validation scan (its heat maps will be empty); train again with "
                "another --seed",
                file=sys.stderr,
            )
        return self.out / "best.pt"

    def _batches(self, epoch: int) -> list[list[int]]:
        from aidnet.training.batches import epoch_batches

        try:
            return epoch_batches(
                len(self.train_set),
                self.scans_per_pair * self.config.batch_size,
                seed=self.config.seed,
                epoch=epoch,
                world=self.procs.world,
                rank=self.procs.rank,
            )
        except ValueError as exc:
            raise AidnetError(f"{self.manifest}: {exc}") from None

    def _train_epoch(self, epoch: int) -> GuardEvent | None:
        """The epoch's training steps from ``state.next_step``; the guard's event or None.

        A step's figures are read (the step's one synchronisation) only after the next step
        has been queued, so a GPU never waits for the guard: a wrong step is caught one step
        late, and the recovery goes back to ``good.pt`` either way. Before a mid-epoch
        checkpoint every step taken has been checked."""
        from tqdm import tqdm

        config, state = self.config, self.state
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch, state.lr_scale)
        self.model.train()
        self.train_set.set_epoch(epoch)
        batches = self._batches(epoch)
        self.epoch_steps = len(batches)
        first = state.next_step
        if first == 0:
            state.totals = dict.fromkeys(LOSS_PARTS, 0.0)
            state.grad_max = 0.0
        self.sampler.batches = [[(epoch, i) for i in b] for b in batches[first:]]
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            total=len(batches),
            initial=first,
            leave=False,
            disable=not (self.progress and self.procs.main),
        )
        saved_at = time.monotonic()
        pending: tuple[int, torch.Tensor] | None = None
        try:
            for step, batch in enumerate(bar, start=first):
                stats = self._step(batch, epoch, step)
                if pending is not None and (event := self._check(epoch, *pending)):
                    return event
                pending = (step, stats)
                done = step + 1
                state.next_step = done
                if done > 1:
                    bar.set_postfix(loss=f"{state.totals['loss'] / (done - 1):.3f}")
                due = (
                    config.checkpoint_steps > 0 and done % config.checkpoint_steps == 0
                ) or time.monotonic() - saved_at > 60 * config.checkpoint_minutes
                if due and done < len(batches):
                    if event := self._check(epoch, *pending):
                        return event
                    pending = None
                    if self.procs.main:
                        self._save(self.last)
                    saved_at = time.monotonic()
        finally:
            bar.close()
        return self._check(epoch, *pending) if pending is not None else None

    def _forward_loss(self, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One batch's loss and, for the guard and the log, its parts and the counts of
        CAC-positive scans with a live and with a dead calcium map."""
        zero = torch.zeros((), device=self.dev)
        amp = self.amp
        with torch.autocast(device_type=self.dev.type, dtype=amp, enabled=amp is not None):
            if self.siamese:
                x1, x2, y1, y2 = (t.to(self.dev, non_blocking=True) for t in batch)
                o1, o2 = self.net(x1, x2)
                maps = (o1.features, o2.features) if self.calcium else (None, None)
                loss, parts = self.pair_loss(o1.logits.float(), o2.logits.float(), y1, y2, *maps)
                values = [parts["ce"], parts["contrastive"], parts["negative"]]
                labels, features = torch.cat([y1, y2]), torch.cat([o1.features, o2.features])
            else:
                x, labels, _ = (t.to(self.dev, non_blocking=True) for t in batch)
                out = self.net(x)[0]
                loss = torch.nn.functional.cross_entropy(out.logits.float(), labels)
                values = [loss.detach(), zero, zero]
                features = out.features
        live, dead = zero, zero
        if self.calcium:
            positive = labels > 0
            has = features.detach().flatten(1).float().sum(1) > 0
            live = (positive & has).sum().float()
            dead = (positive & ~has).sum().float()
        return loss, [loss.detach(), *values, live, dead]

    def _step(self, batch, epoch: int, step: int) -> torch.Tensor:
        """One training step, queued without waiting for the device; returns its figures (the
        loss and its parts, the live/dead map counts, the gradient norm) as one tensor on the
        device, summed over the processes, for :meth:`_check`."""
        from aidnet.training.batches import step_seed

        config = self.config
        torch.manual_seed(step_seed(config.seed, epoch, step, self.procs.rank))
        self.optimizer.zero_grad(set_to_none=True)
        loss, values = self._forward_loss(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # true gradients for the norm (no-op unscaled)
        clip = config.grad_clip if config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)
        return self.procs.all_sum(torch.stack([*(v.float() for v in values), norm.float()]))

    def _check(self, epoch: int, step: int, stats: torch.Tensor) -> GuardEvent | None:
        """Read one step's figures: the guard's verdict, the epoch's totals and the log."""
        world = self.procs.world
        loss, ce, contrastive, negative, live, dead, norm = stats.tolist()
        loss, ce, contrastive, negative, norm = (
            v / world for v in (loss, ce, contrastive, negative, norm)
        )
        # with float16 loss scaling an overflowing gradient is the scaler's to skip
        event = self.guard.step(
            loss, norm if not self.scaler.is_enabled() else 0.0, int(live), int(dead)
        )
        if event is not None:
            self.event_step = step
            return event
        state = self.state
        state.grad_max = max(state.grad_max, norm) if math.isfinite(norm) else state.grad_max
        for key, value in zip(LOSS_PARTS, (loss, ce, contrastive, negative), strict=True):
            state.totals[key] += value
        self.log.step(epoch * self.epoch_steps + step, loss)
        return None

    def _end_epoch(self, epoch: int, t0: float) -> GuardEvent | None:
        """Validation, model selection, checkpoints and the log row of a finished epoch; a
        guard event when validation finds the calcium map dead after it was alive."""
        config, state, procs = self.config, self.state, self.procs
        steps = max(self.epoch_steps, 1)
        val_auc, val_acc, live = float("nan"), float("nan"), float("nan")
        improved, event = False, None
        if procs.main:
            scored = self.average.module if self.average is not None else self.model
            val_auc, val_acc, live = validation_scores(
                scored, self.data.items["val"], config, self.dev, self.amp
            )
            if live == 0.0 and state.live_seen:
                event = GuardEvent(
                    "dead map", "calcium map zero on every CAC-positive validation scan"
                )
        event = procs.from_main(event)
        if event is not None:
            return event
        if procs.main:
            state.live_seen = state.live_seen or live > 0
            score = val_auc if np.isfinite(val_auc) else (val_acc if np.isfinite(val_acc) else 0.0)
            alive = live != 0.0
            best = (state.best_epoch, state.best_live, state.best_auc)
            improved = is_better(config, epoch, alive, score, best)
            if improved:
                state.best_auc, state.best_live, state.best_epoch = score, alive, epoch
                self._save_best(epoch, val_auc)
        self.guard.epoch_done(state.totals["loss"] / steps)
        state.next_epoch, state.next_step = epoch + 1, 0
        if procs.main:
            self._save(self.last)
            self._save(self.good)
            row = {
                "epoch": epoch + 1,
                "lr": self.optimizer.param_groups[0]["lr"],
                **{k: state.totals[k] / steps for k in LOSS_PARTS},
                "grad_norm_max": state.grad_max,
                "val_auc": val_auc,
                "val_accuracy": val_acc,
                "val_map_live": live,
                "seconds": time.perf_counter() - t0,
            }
            self.log.epoch(row)
            if self.progress:
                print(
                    f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.3f}  "
                    f"val AUC {val_auc:.3f}  val acc {val_acc:.3f}"
                    + (f"  map live {live:.2f}" if np.isfinite(live) else "")
                    + f"  ({row['seconds']:.1f} s)"
                    + ("  *best*" if improved else "")
                )
        return None

    def _recover(self, where: str, event: GuardEvent) -> None:
        """Back to ``good.pt`` with the learning rate halved, or stop once the recoveries are
        spent; either way one line on the terminal and in ``RUN/guard.log``."""
        config, state = self.config, self.state
        if state.recoveries >= config.guard_recoveries:
            best = (
                f"best.pt holds epoch {state.best_epoch + 1}"
                if state.best_epoch >= 0
                else "no epoch was selected"
            )
            message = (
                f"{self.out}: training stopped at {where}: {event}, after "
                f"{state.recoveries} recoveries; {best}. Try a lower --lr or --grad-clip"
            )
            self._note(f"stop at {where}: {event}")
            raise AidnetError(message)
        kept = (state.best_auc, state.best_live, state.best_epoch)
        self._load(self.good)  # the weights, optimiser and guard of the last good epoch end
        good = load_checkpoint(self.good)
        state.next_epoch, state.next_step = int(good["next_epoch"]), 0
        state.best_auc, state.best_live, state.best_epoch = kept  # best.pt on disk stays
        state.lr_scale *= 0.5
        state.recoveries += 1
        state.totals = dict.fromkeys(LOSS_PARTS, 0.0)
        self.guard.reset()
        back = f"epoch {state.next_epoch}'s end" if state.next_epoch else "the start"
        self._note(
            f"guard: {where}: {event}; back to {back} with the learning rate x{state.lr_scale:g} "
            f"(recovery {state.recoveries} of {config.guard_recoveries})"
        )
        if self.procs.main:
            self._save(self.last)  # a resume continues from here, not from before the event

    def _note(self, line: str) -> None:
        if not self.procs.main:
            return
        print(line, file=sys.stderr)
        with (self.out / "guard.log").open("a") as fh:
            fh.write(line + "\n")
