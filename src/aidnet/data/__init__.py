"""Cohort manifests, subject-level splits, the preprocessed-scan cache and datasets."""
