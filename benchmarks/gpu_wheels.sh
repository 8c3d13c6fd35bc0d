#!/bin/sh
# Wheels that benchmarks/gpu_job.py needs on the device machine (Python 3.12, x86-64, no
# network there) and that its image lacks: nibabel (NIfTI), pydicom (DICOM), MONAI (the baseline
# networks). They go to .whl/ (git-ignored), which a device `run` carries; see docs/benchmarks.md.
# The versions are this venv's. SimpleITK (NRRD/MHA and compressed DICOM; the phantom job does
# not read those) is a large wheel: add it with WITH_SIMPLEITK=1.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
version() { "$PYTHON" -c "from importlib.metadata import version; print(version('$1'))"; }
set -- "nibabel==$(version nibabel)" "pydicom==$(version pydicom)" "monai==$(version monai)"
if [ "${WITH_SIMPLEITK:-0}" = 1 ]; then
    set -- "$@" "SimpleITK==$(version SimpleITK)"
fi
mkdir -p .whl
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$@"
ls -l .whl
