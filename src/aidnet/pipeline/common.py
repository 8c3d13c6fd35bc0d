"""What evaluation and explanation share: a trained model and the scans it is applied to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidnet.data.cache import preprocess_cohort
from aidnet.data.datasets import Item
from aidnet.data.manifest import ScanRecord, read_manifest
from aidnet.data.splits import read_splits
from aidnet.errors import AidnetError
from aidnet.training.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint


@dataclass
class Trained:
    model: Any
    spec: dict
    path: Path
    run_dir: Path | None

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        z, y, x = self.spec["input_size"]
        return int(z), int(y), int(x)


def load_trained(checkpoint: Path) -> Trained:
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    model = build_from_checkpoint(state, path)
    return Trained(model, state["model_spec"], path, checkpoint if checkpoint.is_dir() else None)


def load_ensemble(checkpoints: Path | list[Path]) -> list[Trained]:
    """One or more trained models whose class probabilities are averaged (a seed ensemble).

    Members must share the network input size (so one preprocessed scan serves them all) and
    the class count; anything else is one AidnetError line naming the member that differs.
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise AidnetError("give at least one --checkpoint")
    members = [load_trained(Path(p)) for p in paths]
    first = members[0]
    for other in members[1:]:
        if (other.input_size, other.num_classes) != (first.input_size, first.num_classes):
            raise AidnetError(
                f"{other.path}: cannot be averaged with {first.path}: input "
                f"{'×'.join(map(str, other.input_size))} with {other.num_classes} classes, "
                f"not {'×'.join(map(str, first.input_size))} with {first.num_classes}"
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


def cached_items(
    records: list[ScanRecord], trained: Trained, cache_dir: Path | None, out: Path
) -> tuple[list[Item], dict[str, str]]:
    """Preprocess (or reuse) every scan; failures are returned, not raised."""
    if cache_dir is None:
        cache_dir = (trained.run_dir / "cache") if trained.run_dir else out / "cache"
    cached = preprocess_cohort(records, cache_dir, trained.input_size, progress=True)
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
