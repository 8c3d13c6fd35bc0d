"""CT input and output: every reader returns a :class:`Volume` in the canonical orientation."""

from aidnet.io.volume import Volume, canonical_affine

__all__ = ["Volume", "canonical_affine"]
