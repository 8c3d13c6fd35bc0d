"""What evaluation and explanation share: a trained model and the scans it is applied to."""

from __future__ import annotations

from pathlib import Path

import torch

from aidnet.data.cache import preprocess_cohort, recorded_cache_dir
from aidnet.data.datasets import Item
from aidnet.data.manifest import ScanRecord, read_manifest
from aidnet.data.splits import read_splits
from aidnet.errors import AidnetError
from aidnet.inference import Trained
from aidnet.preprocess.config import LATER_OPTIONS
from aidnet.training.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint


def load_trained(checkpoint: Path) -> Trained:
    """The model of a run folder (its best.pt) or checkpoint file, on the CPU."""
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    model = build_from_checkpoint(state, path)
    config = state.get("config")
    amp = bool(config.get("amp", False)) if isinstance(config, dict) else False
    run_dir = checkpoint if checkpoint.is_dir() else None
    return Trained(model, state["model_spec"], path, run_dir, amp=amp)


def on_device(trained: Trained, device: torch.device) -> Trained:
    """``trained`` with its model moved to ``device``, where its heat maps are computed too."""
    if isinstance(trained.model, torch.nn.Module):  # (tests use plain stand-ins on the CPU)
        trained.model.to(device)
    trained.device = device
    return trained


def load_ensemble(
    checkpoints: Path | list[Path], device: torch.device | None = None
) -> list[Trained]:
    """One or more trained models whose class probabilities are averaged (a seed ensemble).

    Members must share the network input and its preprocessing (so one preprocessed scan serves
    them all) and the class count; anything else is one AidnetError line naming the member
    that differs.
    With ``device``, every member is moved there (:func:`on_device`).
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise AidnetError("give at least one --checkpoint")
    members = [load_trained(Path(p)) for p in paths]
    if device is not None:
        members = [on_device(m, device) for m in members]
    first = members[0]
    for other in members[1:]:
        if (other.input_size, other.num_classes) != (first.input_size, first.num_classes):
            raise AidnetError(
                f"{other.path}: cannot be averaged with {first.path}: input "
                f"{'×'.join(map(str, other.input_size))} with {other.num_classes} classes, "
                f"not {'×'.join(map(str, first.input_size))} with {first.num_classes}"
            )
        if other.preprocess != first.preprocess:
            raise AidnetError(
                f"{other.path}: cannot be averaged with {first.path}: trained on inputs "
                f"preprocessed differently ({', '.join(LATER_OPTIONS)})"
            )
    return members


def ensemble_name(members: list[Trained]) -> str:
    """``aidnet`` for one model; ``aidnet ×5`` or ``ensemble of aidnet, idnet`` for several."""
    names = [m.spec["name"] for m in members]
    if len(names) == 1:
        return names[0]
    if len(set(names)) == 1:
        return f"{names[0]} ×{len(names)}"
    return "ensemble of " + ", ".join(names)


def select_ensemble_records(
    manifest: Path, members: list[Trained], split: str = "all"
) -> list[ScanRecord]:
    """:func:`select_records` of the first member; with a split, every member must have been
    trained on the same one (else its test scans could be another member's training scans)."""
    records = select_records(manifest, members[0], split)
    if split != "all":
        keys = [r.key for r in records]
        for other in members[1:]:
            if [r.key for r in select_records(manifest, other, split)] != keys:
                raise AidnetError(
                    f"{other.path}: trained on another subject split than {members[0].path}; "
                    "train ensemble members with --splits on one split"
                )
    return records


def select_records(manifest: Path, trained: Trained, split: str = "all") -> list[ScanRecord]:
    records = read_manifest(manifest)
    if split == "all":
        return records
    if split not in ("train", "val", "test"):
        raise AidnetError(f"--split must be all, train, val or test, not '{split}'")
    run_dir = trained.run_dir or trained.path.parent
    assignment = read_splits(run_dir / "splits.csv")
    chosen = [r for r in records if assignment.get(r.subject) == split]
    if not chosen:
        raise AidnetError(f"{manifest}: no scan of this manifest is in the run's {split} split")
    return chosen


def run_folder(trained: Trained) -> Path | None:
    """The run the model comes from: the folder given, or the folder of a checkpoint file
    given that holds the run's ``config.yaml``; None for a checkpoint on its own."""
    if trained.run_dir is not None:
        return trained.run_dir
    parent = trained.path.parent
    return parent if (parent / "config.yaml").is_file() else None


def default_cache_dir(trained: Trained, out: Path) -> Path:
    """Where scans are preprocessed without ``--cache``: the cache the model's training filled
    (the run's record of it, else ``RUN/cache``), so its scans are not preprocessed again;
    ``out/cache`` for a checkpoint outside a run. Reuse is safe: a cache file's name fixes its
    input file and preprocessing settings."""
    run = run_folder(trained)
    if run is None:
        return out / "cache"
    recorded = recorded_cache_dir(run)
    if recorded is not None:
        return recorded
    if trained.run_dir is not None or (run / "cache").is_dir():
        return run / "cache"
    return out / "cache"


def cached_items(
    records: list[ScanRecord],
    trained: Trained,
    cache_dir: Path | None,
    out: Path,
    workers: int = 1,
) -> tuple[list[Item], dict[str, str]]:
    """Preprocess (in ``workers`` processes) or reuse every scan; failures are returned, not
    raised. Without ``cache_dir``, :func:`default_cache_dir`."""
    if cache_dir is None:
        cache_dir = default_cache_dir(trained, out)
    cached = preprocess_cohort(
        records, cache_dir, trained.preprocess, workers=workers, progress=True
    )
    done, failures = cached.done, cached.failures
    items = [Item(r, done[r.key]) for r in records if r.key in done]
    return items, failures


def raise_if_failed(failures: dict[str, str], what: str) -> None:
    if failures:
        first_key = sorted(failures)[0]
        raise AidnetError(
            f"{len(failures)} scan(s) could not be {what} (the others were written); "
            f"first: {failures[first_key]}"
        )
