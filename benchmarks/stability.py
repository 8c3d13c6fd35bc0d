"""How far a model's P(CAC) moves when the same scan is reconstructed a little differently.

    python -m benchmarks.stability RUN_OR_PT [RUN_OR_PT ...] --manifest M [--per-class 10]
        [--split test] [--splits RUN/splits.csv] [--scans DIR] [--noise-ceiling model|on|off]
        [--out FILE.json]

Every scan is scored as it is and after each of a few mild changes of its HU array on the
scan's own grid, the kind that separate scanners and protocols (``VARIANTS``): a softer
reconstruction kernel (in-plane Gaussian blur, 0.6 and 1.2 mm), a sharper one (unsharp mask)
more noise (in-plane correlated, 25 HU) and a sharp lung kernel (edge enhancement and 70 HU
of high-passed noise). Scans: the first ``--per-class`` CAC-positive and
CAC-negative ``scan`` visits of the manifest's subjects in ``--split`` of ``--splits`` (default:
the first checkpoint's run split, its test subjects), and the two real chest CTs of ``make
real-scans`` when they are there. Each checkpoint is scored on its own (no heat maps: P(CAC)
only, as ``aidnet predict`` computes it). The summary gives, per change, the median and the
largest |ΔP(CAC)| over the phantom scans (all checkpoints together), the share above 0.2, and
each real scan's P(CAC) per checkpoint. A single real-scan P(CAC) that moves far under a change
this small is a weak basis for any decision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: one in-plane step of the kernel changes, in mm (Gaussian sigma)
SOFT_MM = (0.6, 1.2)
SHARP_MM = 0.8  # the unsharp mask's blur: a + (a - blur(a))
NOISE_HU = 25.0  # standard deviation of the added noise
NOISE_GRAIN_PX = 0.7  # in-plane correlation of the added noise (Gaussian sigma, pixels)
#: a sharp lung kernel: edge enhancement a + (a - blur) and high-passed noise of this many HU
LUNG_KERNEL_MM = 0.7
LUNG_KERNEL_NOISE_HU = 70.0
#: |ΔP(CAC)| that counts as a large move
LARGE = 0.2


def _blur(hu: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(hu, (0.0, sigma_mm / spacing[1], sigma_mm / spacing[2]))


def _noise(hu: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    grain = rng.standard_normal(hu.shape).astype(np.float32)
    grain = ndimage.gaussian_filter(grain, (0.0, NOISE_GRAIN_PX, NOISE_GRAIN_PX))
    return hu + grain * np.float32(NOISE_HU / float(grain.std()))


def _lung_kernel(hu: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    grain = rng.standard_normal(hu.shape).astype(np.float32)
    grain -= 0.8 * ndimage.gaussian_filter(grain, (0.0, 1.0, 1.0))  # high-passed, pixel-level
    grain *= np.float32(LUNG_KERNEL_NOISE_HU / float(grain.std()))
    return 2 * hu - _blur(hu, spacing, LUNG_KERNEL_MM) + grain


Change = Callable[[np.ndarray, tuple, np.random.Generator], np.ndarray]
VARIANTS: dict[str, tuple[str, Change]] = {
    "soft_0.6mm": ("in-plane Gaussian blur, sigma 0.6 mm", lambda a, s, r: _blur(a, s, 0.6)),
    "soft_1.2mm": ("in-plane Gaussian blur, sigma 1.2 mm", lambda a, s, r: _blur(a, s, 1.2)),
    "sharp": (
        f"unsharp mask: a + (a - blur {SHARP_MM} mm)",
        lambda a, s, r: 2 * a - _blur(a, s, SHARP_MM),
    ),
    "noise_25HU": (
        f"in-plane correlated Gaussian noise, {NOISE_HU:g} HU",
        lambda a, s, r: _noise(a, s, r),
    ),
    "lung_kernel": (
        f"sharp lung kernel: a + (a - blur {LUNG_KERNEL_MM} mm) and high-passed noise, "
        f"{LUNG_KERNEL_NOISE_HU:g} HU",
        lambda a, s, r: _lung_kernel(a, s, r),
    ),
}


def phantom_scans(manifest: Path, splits: Path, split: str, per_class: int) -> list[dict]:
    """The first ``per_class`` CAC-positive and CAC-negative labelled ``scan`` visits of
    ``split``'s subjects (``all``: every subject), in manifest order."""
    from aidnet.data.manifest import read_manifest
    from aidnet.data.splits import read_splits

    chosen = read_splits(splits)
    rows = [
        r
        for r in read_manifest(manifest)
        if r.visit == "scan"
        and r.agatston is not None
        and (split == "all" or chosen.get(r.subject) == split)
    ]
    positive = [r for r in rows if r.agatston][:per_class]
    negative = [r for r in rows if not r.agatston][:per_class]
    return [
        {"name": r.key, "source": "phantom", "agatston": r.agatston, "path": str(r.path)}
        for r in positive + negative
    ]


def score(members: list, volume, hu: np.ndarray, config=None) -> list[float | str]:
    """P(CAC) of each member for ``volume`` with its array replaced by ``hu`` (an error line
    where preprocessing refuses it), preprocessed with ``config`` (default: the first
    member's)."""
    import torch

    from aidnet.errors import AidnetError
    from aidnet.evaluation.predictions import class_columns
    from aidnet.inference import class_probs
    from aidnet.preprocess.sample import preprocess_volume

    changed = dataclasses.replace(volume, array=hu)
    try:
        image = preprocess_volume(changed, config or members[0].preprocess).image
    except AidnetError as exc:
        return [str(exc)] * len(members)
    x = torch.from_numpy(image[None])
    out: list[float | str] = []
    with torch.no_grad():
        for m in members:
            probs = class_probs(m.model.forward_single(x.to(m.device)).logits)[0]
            out.append(round(class_columns(probs.cpu().numpy())["p_cac"], 4))
    return out


def summarise(scans: list[dict], checkpoints: int) -> dict:
    """Per change: the phantom scans' |ΔP| (median, largest, share above ``LARGE``, n) and
    each real scan's P(CAC) as it is and changed, per checkpoint."""
    out: dict = {"phantom": {}, "real": {}}
    for variant in VARIANTS:
        moves = [
            abs(s["p_cac"][variant][i] - s["p_cac"]["original"][i])
            for s in scans
            if s["source"] == "phantom"
            for i in range(checkpoints)
            if isinstance(s["p_cac"][variant][i], float)
            and isinstance(s["p_cac"]["original"][i], float)
        ]
        if moves:
            out["phantom"][variant] = {
                "median_abs_change": round(statistics.median(moves), 4),
                "max_abs_change": round(max(moves), 4),
                f"share_above_{LARGE}": round(sum(m > LARGE for m in moves) / len(moves), 3),
                "n": len(moves),
            }
    for s in scans:
        if s["source"] == "real":
            out["real"][s["name"]] = s["p_cac"]
    return out


def main(argv: list[str] | None = None) -> int:
    from aidnet.errors import AidnetError
    from aidnet.io.read import read_volume
    from aidnet.pipeline.common import load_ensemble
    from benchmarks.default_model import _commit
    from benchmarks.real_check import real_scans
    from benchmarks.real_scans import default_dest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--manifest", type=Path, required=True, help="the phantom cohort's")
    ap.add_argument("--splits", type=Path, default=None, help="default: the first run's")
    ap.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--scans", type=Path, default=None, help="lung1/lung2 (make real-scans)")
    ap.add_argument("--seed", type=int, default=0, help="the added noise's")
    ap.add_argument(
        "--noise-ceiling",
        choices=("model", "on", "off"),
        default="model",
        help="smooth scans noisier than the phantom (preprocess/noise.py): as the checkpoint "
        "was trained, or forced on or off",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    try:
        import torch

        members = [load_ensemble(c, torch.device("cpu"))[0] for c in args.checkpoints]
        config = members[0].preprocess
        if args.noise_ceiling != "model":
            config = dataclasses.replace(config, noise_ceiling=args.noise_ceiling == "on")
        first = args.checkpoints[0]
        splits = args.splits or (first if first.is_dir() else first.parent) / "splits.csv"
        scans = phantom_scans(args.manifest, splits, args.split, args.per_class)
        folder = args.scans or default_dest()
        scans += [
            {"name": name, "source": "real", "path": str(path)}
            for name, path in real_scans(folder).items()
            if path.exists()
        ]
        for index, scan in enumerate(scans):
            volume = read_volume(scan["path"])
            hu = np.asarray(volume.array, dtype=np.float32)
            rng = np.random.default_rng([args.seed, index])
            scan["p_cac"] = {"original": score(members, volume, hu, config)}
            for variant, (_, change) in VARIANTS.items():
                changed = change(hu, volume.spacing, rng)
                scan["p_cac"][variant] = score(members, volume, changed, config)
            print(json.dumps({scan["name"]: scan["p_cac"]}), flush=True)
    except AidnetError as exc:
        print(f"stability: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
        "checkpoints": [str(c) for c in args.checkpoints],
        "variants": {name: text for name, (text, _) in VARIANTS.items()},
        "noise_ceiling": config.noise_ceiling,
        "split": args.split,
        "scans": scans,
        "summary": summarise(scans, len(members)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for variant, row in report["summary"]["phantom"].items():
        print(
            f"phantom, {variant}: median |dP| {row['median_abs_change']}, largest "
            f"{row['max_abs_change']}, share > {LARGE} {row[f'share_above_{LARGE}']} "
            f"(n {row['n']})"
        )
    for name, row in report["summary"]["real"].items():
        print(f"{name}: " + "; ".join(f"{v} {row[v]}" for v in row))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
