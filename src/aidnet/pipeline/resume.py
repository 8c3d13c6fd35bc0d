"""Per-scan results of a long job, kept as they come, so that a killed run resumes.

Heat maps with integrated gradients take seconds to a minute per scan on a CPU; on a cohort of
thousands a kill must not throw the finished scans away. A :class:`ScanLog` is a JSON-lines file
in the job's output folder: one line per finished scan, written and flushed as soon as that scan
is done. Each line carries the job's context (what it computes, the checkpoint's SHA-256, the
aidnet version) and the scan's fingerprint: its cache file, whose name fixes its input file and
preprocessing, and the size and time of its label map, when it has one.
Run again into the same folder, the job serves the scans it finds there and computes only the
rest; lines of another context, or one cut short by the kill, are ignored. The file is removed
once the job has written its final outputs with no scan failed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aidnet.atomic import atomic_path
from aidnet.data.datasets import Item


def fingerprint(item: Item, base: Path | None = None) -> str:
    """What must not have changed for a scan's logged result to stand: its cache file (input
    file and preprocessing) and, if its manifest row names one (relative to ``base``), the
    size and modification time of its label map."""
    from aidnet.explain.scoring import label_path_of

    parts = [Path(item.cache).name]
    label = None if base is None else label_path_of(item.record, base)
    if label is not None:
        try:
            st = label.stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("missing")
    return "|".join(parts)


def job_context(job: str, checkpoint: Path) -> dict:
    """What a log's lines must share to be reused: the job, the checkpoint and aidnet's version."""
    from aidnet import __version__
    from aidnet.training.checkpoint import file_sha256

    digest = file_sha256(checkpoint) if Path(checkpoint).is_file() else None
    return {"job": job, "checkpoint": str(checkpoint), "sha256": digest, "aidnet": __version__}


def ensemble_context(job: str, checkpoints: list[Path]) -> dict:
    """:func:`job_context` of the first checkpoint; for a seed ensemble the log is its own:
    every member's file counts (``members``)."""
    context = job_context(job, checkpoints[0])
    if len(checkpoints) > 1:
        context["members"] = [job_context(job, c) for c in checkpoints]
    return context


class ScanLog:
    """Finished scans of one job (see the module docstring)."""

    def __init__(self, path: Path, context: dict, base: Path | None = None) -> None:
        self.path = Path(path)
        self.context = context
        self.base = base  # the manifest's folder, for label maps (see fingerprint)
        self._done: dict[tuple[str, str], Any] = {}
        kept: list[str] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # cut short by a kill
                if isinstance(entry, dict) and entry.get("context") == context:
                    self._done[(entry["key"], entry["cache"])] = entry["value"]
                    kept.append(line)
            # keep only what this run can use; the file then ends with a whole line
            with atomic_path(self.path, suffix=".jsonl") as tmp:
                tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def __len__(self) -> int:
        return len(self._done)

    def get(self, item: Item) -> Any | None:
        """The stored result of ``item`` (same scan, same fingerprint), or None."""
        return self._done.get((item.record.key, fingerprint(item, self.base)))

    def add(self, item: Item, value: Any) -> None:
        """Store ``item``'s result (JSON-serialisable) and flush it to disk at once."""
        key = (item.record.key, fingerprint(item, self.base))
        entry = {"context": self.context, "key": key[0], "cache": key[1], "value": value}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._done[key] = value

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def rows_to_json(rows: list[dict]) -> list[dict]:
    """``localisation_rows`` output as JSON values (the score as a plain dict)."""
    return [{**row, "score": asdict(row["score"])} for row in rows]


def rows_from_json(rows: list[dict]) -> list[dict]:
    """The inverse of :func:`rows_to_json`."""
    from aidnet.explain.localisation import Localisation

    out = []
    for row in rows:
        score = dict(row["score"])
        if score.get("peak") is not None:
            score["peak"] = tuple(int(i) for i in score["peak"])
        out.append({**row, "score": Localisation(**score)})
    return out
