"""Synthetic non-contrast chest-CT cohorts with exact coronary-calcium truth (scan + rescan)."""

from aidnet.phantom.cohort import make_cohort, render_pair, subject_seed

__all__ = ["make_cohort", "render_pair", "subject_seed"]
