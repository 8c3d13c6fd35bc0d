"""End-to-end jobs built from the stages: evaluate a run, explain scans, the demo."""

from aidnet.pipeline.demo import run_demo
from aidnet.pipeline.evaluate import evaluate_run
from aidnet.pipeline.explain import explain_manifest

__all__ = ["evaluate_run", "explain_manifest", "run_demo"]
