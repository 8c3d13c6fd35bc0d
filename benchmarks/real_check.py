"""A model on the two real chest CTs of pyradiomics 3.0.1: P(CAC) and where Grad-CAM points.

    python -m benchmarks.real_check RUN_OR_PT [RUN_OR_PT ...] [--scans DIR] [--out FILE.json]

Each checkpoint is scored on its own (several are also scored as one ensemble with ``--ensemble``).
For each scan: P(CAC), the class probabilities, the Grad-CAM peak as a voxel (i, j, k) of the
scan's own grid and as RAS+ millimetres, and for lung2 the distance from that peak to the nearest
voxel of the calcifications issue 32 describes (a calcified right coronary artery near its origin
on slices k 27–30, rows j 140–185, columns i 240–290; calcium in the left atrioventricular groove
on k 30–32, j 190–265, i 300–350; voxels ≥ 130 HU inside those boxes). The boxes are used here
only to *measure* a model; nothing in aidnet reads them. For a single AID-Net with the calcium
or gated head, the CAC log-odds are also split into their two parts (``logit_parts``): the
calcium map's evidence, which only rises with calcium on the map, and the rest — the SAG's
attention-pooled features through their dense layer (calcium head), which may move it either
way, or a constant bias (gated head).

The scans come from ``make real-scans`` (``--scans``, default as there). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

#: lung2's described calcifications: (i, j, k) index ranges, inclusive, on the scan's own grid
LUNG2_CALCIUM = {
    "rca_origin": ((240, 290), (140, 185), (27, 30)),
    "left_av_groove": ((300, 350), (190, 265), (30, 32)),
}
CALCIUM_HU = 130.0


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    """Voxel indices (..., 3) → RAS+ mm (..., 3)."""
    ijk = np.asarray(ijk, dtype=float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def lung2_calcium_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxel indices, RAS+ mm) of every voxel ≥ 130 HU inside lung2's described boxes."""
    from aidnet.io.nifti import nifti_layout
    from aidnet.io.read import read_volume

    volume = read_volume(path)
    hu, affine = nifti_layout(*volume.to_source(volume.array))  # (i, j, k) as the heat maps
    points = []
    for (i0, i1), (j0, j1), (k0, k1) in LUNG2_CALCIUM.values():
        box = hu[i0 : i1 + 1, j0 : j1 + 1, k0 : k1 + 1]
        idx = np.argwhere(box >= CALCIUM_HU) + [i0, j0, k0]
        points.append(idx)
    ijk = np.concatenate(points)
    return ijk, _world(affine, ijk)


def logit_parts(trained, path: Path) -> dict[str, float] | None:
    """log P(CAC) / P(no CAC) of one AID-Net with the calcium or gated head, split into the
    calcium evidence's part and the rest's (the SAG features' dense layer, or the bias; each a
    log-sum-exp over the CAC classes less class 0, so the two do not add exactly); None for
    other models."""
    import torch

    from aidnet.pipeline.predict import prepare_scan

    net = trained.model
    head = getattr(net, "evidence", None)
    if head is None:
        return None
    _, sample = prepare_scan(path, trained.preprocess)
    x = torch.from_numpy(sample.image[None]).to(trained.device)
    with torch.no_grad():
        maps = net.forward_features(x)
        from_map, rest = net.logit_parts(maps)

    def cac_log_odds(logits) -> float:
        return float(torch.logsumexp(logits[0, 1:], 0) - logits[0, 0])

    return {
        "total": round(cac_log_odds(from_map + rest), 3),
        "calcium_map": round(cac_log_odds(from_map), 3),
        "rest": round(cac_log_odds(rest), 3),
        "map_sum": round(float(maps.map.sum()), 2),
    }


def real_scans(folder: Path) -> dict[str, Path]:
    """lung1 and lung2 in ``folder`` (as ``make real-scans`` leaves them), by name."""
    return {n: folder / f"{n}_image.nrrd" for n in ("lung1", "lung2")}


def check(model, scans: dict[str, Path]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, path in scans.items():
        result = model.predict(path)
        cam = result.heatmaps.get("gradcam")
        row: dict = {
            "p_cac": round(result.p_cac, 4),
            "class_probabilities": {k: round(v, 4) for k, v in result.class_probabilities.items()},
        }
        if cam is not None and float(cam.max()) > 0:
            peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
            row["peak_voxel"] = [int(v) for v in peak]
            row["peak_ras_mm"] = [round(float(v), 1) for v in _world(result.affine, peak)]
            if name == "lung2":
                _, xyz = lung2_calcium_points(path)
                d = np.linalg.norm(xyz - np.asarray(row["peak_ras_mm"]), axis=1)
                row["peak_to_described_calcium_mm"] = round(float(d.min()), 1)
        else:
            row["peak_voxel"] = None
        if len(model.members) == 1:
            parts = logit_parts(model.members[0], path)
            if parts is not None:
                row["logit_parts"] = parts
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    from aidnet.api import load_model
    from aidnet.errors import AidnetError
    from benchmarks.real_scans import default_dest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--scans", type=Path, default=None)
    ap.add_argument("--ensemble", action="store_true", help="also score them as one ensemble")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    folder = args.scans or default_dest()
    scans = real_scans(folder)
    missing = [str(p) for p in scans.values() if not p.exists()]
    if missing:
        print(f"real_check: error: {missing[0]}: not found (run make real-scans)", file=sys.stderr)
        return 2
    report: dict[str, dict] = {}
    try:
        for ckpt in args.checkpoints:
            report[str(ckpt)] = check(load_model(ckpt, device="cpu"), scans)
            print(json.dumps({str(ckpt): report[str(ckpt)]}), flush=True)
        if args.ensemble and len(args.checkpoints) > 1:
            report["ensemble"] = check(load_model(list(args.checkpoints), device="cpu"), scans)
            print(json.dumps({"ensemble": report["ensemble"]}), flush=True)
    except AidnetError as exc:
        print(f"real_check: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
