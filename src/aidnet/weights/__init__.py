"""The default model shipped with aidnet: trained only on synthetic phantom scans.

It is what ``aidnet predict`` and ``aidnet explain`` use without ``--checkpoint`` and what
:func:`aidnet.api.load_model` loads by default. Its training recipe is ``recipe.yaml`` beside
it (``make default-model`` retrains it); what it was and was not tested on is in
docs/model-card.md. It is not a clinical device.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aidnet.errors import AidnetError

FILE = "default.pt"


def default_checkpoint() -> Path:
    """The shipped default model's checkpoint, or one AidnetError line saying what to do."""
    path = Path(str(resources.files(__name__).joinpath(FILE)))
    if not path.is_file():
        raise AidnetError(
            f"no default model in this install ({path} is missing): give --checkpoint, or "
            "build it with `make default-model`"
        )
    return path
