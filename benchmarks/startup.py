"""Start-up latency: ``aidnet lungs`` on one chest CT and ``aidnet --help``, as whole commands.

Each run is the real command line in a fresh process (interpreter start, imports, reading the
scan, segmenting the lungs, writing the mask: what a user waits for). The scan is ``--image``
when given, else the 512×512×61 chest CT shipped with pyradiomics' sources when it is on this
machine, else a full-size phantom scan written as NRRD.

Reduced size for a smoke test::

    python -m benchmarks.startup --repeats 1 --size small
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.real_scans import default_dest

#: whole-command targets on a machine with 2 cores (seconds)
TARGET_LUNGS_S = 0.7
TARGET_HELP_S = 0.3
#: a real 512×512×61 chest CT (pyradiomics 3.0.1 test data, ``make real-scans``), used when present
REAL_CT = default_dest() / "lung2_image.nrrd"


def _run(command: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, done.stdout.strip()


def _phantom_scan(folder: Path, size: str) -> Path:
    import numpy as np
    import SimpleITK as sitk

    from aidnet.phantom import render_pair

    volume = render_pair(11, size, 1)[0][0]
    image = sitk.GetImageFromArray(np.rint(volume.array).astype(np.int16))
    image.SetSpacing([float(s) for s in reversed(volume.spacing)])
    path = folder / f"phantom_{size}.nrrd"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def bench_startup(repeats: int, image: Path | None = None, size: str = "full") -> dict:
    """Median wall time over ``repeats`` fresh processes of ``aidnet lungs IMAGE --out …`` and
    of ``aidnet --help``, against :data:`TARGET_LUNGS_S` and :data:`TARGET_HELP_S`."""
    aidnet = [sys.executable, "-m", "aidnet.cli"]
    with tempfile.TemporaryDirectory(prefix="aidnet-bench-") as tmp:
        folder = Path(tmp)
        if image is None and REAL_CT.exists() and size == "full":
            image = REAL_CT
        name = str(image) if image is not None else f"phantom {size} scan (seed 11) as NRRD"
        if image is None:
            image = _phantom_scan(folder, size)
        out = folder / "lungs.nii.gz"
        _run([*aidnet, "--help"])  # warm the file cache (the byte-code, the scan) once
        lungs, helps = [], []
        line = ""
        for _ in range(repeats):
            seconds, line = _run([*aidnet, "lungs", str(image), "--out", str(out)])
            lungs.append(seconds)
            helps.append(_run([*aidnet, "--help"])[0])
        mask_bytes = out.stat().st_size
    lungs_median, help_median = statistics.median(lungs), statistics.median(helps)
    return {
        "image": name,
        "lungs_s": {"median": lungs_median, "runs": lungs},
        "help_s": {"median": help_median, "runs": helps},
        "output": line,
        "mask_bytes": mask_bytes,
        "target": {"lungs_s": TARGET_LUNGS_S, "help_s": TARGET_HELP_S, "cores": 2},
        "meets_target": lungs_median <= TARGET_LUNGS_S and help_median <= TARGET_HELP_S,
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def main() -> None:
    from benchmarks.output import emit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", type=Path, help="CT to segment (default: see above)")
    parser.add_argument("--size", default="full", help="phantom size when no real CT is used")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args()
    result = bench_startup(args.repeats, image=args.image, size=args.size)
    emit(result, args.out)


if __name__ == "__main__":  # pragma: no cover - manual run: python -m benchmarks.startup
    main()
