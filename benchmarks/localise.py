"""Heat maps and their scores in ``aidnet evaluate``: what the localisation step costs per scan.

    python -m benchmarks.localise [--subjects 4] [--size full] [--preset RECIPE_OR_PRESET]
        [--repeats 3] [--seed 1] [--out FILE.json]

On a phantom cohort of ``--size`` (full: 512 × 512 scans, as real chest CTs), an untrained
network of the preset's size (its weights do not change the time) is evaluated in this process
on every scan, with and without the localisation step, alternating, after one run that fills
the cache. Reported, as medians over ``--repeats``:

* ``localise_per_scan_s``: (with − without) / the scans scored (those with coronary calcium
  labels): every heat map of the scan on its own grid, kept on its calcium candidates, scored
  against its label map; and its ratio to ``predict_per_scan_s`` (the run without it, per
  scan: cache reads and the network's predictions), measured in the same process.
* ``single_scan``: one scan's forward pass, and its integrated gradients, through the
  network with :class:`aidnet.models.blocks.Conv3d` (a batch of one sent to oneDNN; the
  integrated gradients :data:`aidnet.explain.gradcam.IG_BATCH` steps per pass) against the same
  network with PyTorch's own ``nn.Conv3d`` and one step per pass — the reference, as before
  2026-12-08 — in the same process.

Reduced size for a smoke test::

    python -m benchmarks.localise --subjects 3 --size small --preset tiny --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_PRESET = str(Path(__file__).resolve().parents[1] / "src/aidnet/weights/recipe.yaml")


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _single_scan(checkpoint: Path, image, repeats: int) -> dict:
    """One scan's forward pass and integrated gradients, our convolutions against PyTorch's."""
    import torch
    from torch import nn

    from aidnet.explain.gradcam import IG_BATCH, integrated_gradients
    from aidnet.models.blocks import Conv3d
    from aidnet.pipeline.common import load_ensemble

    model = load_ensemble(checkpoint, torch.device("cpu"))[0].model.eval()
    x = torch.from_numpy(image)[None]

    def forward() -> None:
        with torch.no_grad():
            model.forward_single(x)

    ours = {
        "forward_s": _median_s(forward, repeats),
        "integrated_gradients_s": _median_s(lambda: integrated_gradients(model, x), repeats),
    }
    for module in model.modules():
        if isinstance(module, Conv3d):
            module.__class__ = nn.Conv3d
    reference = {
        "forward_s": _median_s(forward, repeats),
        "integrated_gradients_s": _median_s(
            lambda: integrated_gradients(model, x, batch=1), repeats
        ),
    }
    return {
        "ours": ours,
        "reference_nn_conv3d_one_step_per_pass": reference,
        "ratio_forward": ours["forward_s"] / reference["forward_s"],
        "ratio_integrated_gradients": (
            ours["integrated_gradients_s"] / reference["integrated_gradients_s"]
        ),
        "ig_batch": IG_BATCH,
    }


def bench_localise(
    repeats: int,
    subjects: int = 4,
    size: str = "full",
    preset: str = DEFAULT_PRESET,
    seed: int = 1,
) -> dict:
    """Median localisation and prediction time per scan of ``aidnet evaluate`` (see the
    module docstring) and the single-scan passes against PyTorch's own convolutions."""
    from aidnet.data.cache import load_cached
    from aidnet.phantom import make_cohort
    from aidnet.pipeline.evaluate import evaluate_run
    from benchmarks.evaluate_workers import write_checkpoint

    with tempfile.TemporaryDirectory(prefix="aidnet-bench-") as tmp:
        folder = Path(tmp)
        manifest = make_cohort(folder / "cohort", subjects=subjects, seed=seed, size=size)
        checkpoint = write_checkpoint(folder / "model" / "best.pt", preset)
        cache = folder / "cache"
        out = folder / "eval"

        def run(localise: bool) -> tuple[float, dict]:
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            metrics = evaluate_run(
                checkpoint, manifest, out, cache_dir=cache, localise=localise, device="cpu"
            )
            return time.perf_counter() - t0, metrics

        run(False)  # fills the cache
        scans = len(manifest.read_text(encoding="utf-8").splitlines()) - 1
        with_loc: list[float] = []
        without: list[float] = []
        scored = 0
        for _ in range(repeats):
            seconds, metrics = run(True)
            with_loc.append(seconds)
            scored = int(metrics.get("localisation", {}).get("gradcam", {}).get("n", 0))
            without.append(run(False)[0])
        first = sorted(cache.glob("*.npz"))[0]
        single = _single_scan(checkpoint, load_cached(first).image, repeats)
    predict = statistics.median(without) / scans
    if scored == 0:
        raise SystemExit("no scan of this cohort has coronary calcium: take more --subjects")
    localise = (statistics.median(with_loc) - statistics.median(without)) / scored
    return {
        "cohort": f"phantom, {size}, {subjects} subjects, seed {seed}",
        "scans": scans,
        "scans_scored": scored,
        "preset": preset,
        "evaluate_with_localisation_s": {"median": statistics.median(with_loc), "runs": with_loc},
        "evaluate_without_s": {"median": statistics.median(without), "runs": without},
        "localise_per_scan_s": localise,
        "predict_per_scan_s": predict,
        "ratio_localise_to_predict": localise / predict,
        "single_scan": single,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    from benchmarks.output import emit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=4, help="2 scans each")
    parser.add_argument("--size", default="full", help="phantom size: full, medium or small")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="sets the network")
    parser.add_argument("--seed", type=int, default=1, help="the phantom cohort's seed")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args()
    result = bench_localise(args.repeats, args.subjects, args.size, args.preset, args.seed)
    emit(result, args.out)


if __name__ == "__main__":  # pragma: no cover - manual run: python -m benchmarks.localise
    main()
