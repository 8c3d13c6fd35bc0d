"""The tiny phantom cohort and its preprocessed cache, made once for every training test."""

import pytest

from aidnet.config import load_config
from aidnet.phantom import make_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, subjects=16, seed=9, size="small", dicom_fraction=0.1)


@pytest.fixture(scope="session")
def cache(cohort, tmp_path_factory):
    """One preprocessed cache for every run of the training tests (training reads it)."""
    from aidnet.data.cache import preprocess_cohort
    from aidnet.data.manifest import read_manifest

    folder = tmp_path_factory.mktemp("cache")
    preprocess_cohort(read_manifest(cohort), folder, load_config("tiny").input_size, progress=False)
    return folder
