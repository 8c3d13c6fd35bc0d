"""A small Python API for notebooks: load a model, predict a scan, get arrays back.

>>> from aidnet.api import load_model
>>> model = load_model()                      # the shipped default model, or a run / .pt file
>>> result = model.predict("chest_ct.nrrd")   # DICOM folder, NIfTI, NRRD or MHA
>>> result.p_cac, result.class_probabilities
>>> heat = result.heatmaps["gradcam"]         # on the scan's own grid, with result.affine

Nothing is written to disk. The default model was trained only on synthetic scans
(docs/model-card.md); it is not a clinical device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aidnet.inference import Trained


@dataclass
class Prediction:
    """One scan's result: P(CAC), the class probabilities by class name, and each heat map
    (Grad-CAM; attention maps for AID-Net) as an array on the scan's own voxel grid, indexed
    (i, j, k) as the heat-map NIfTI files ``aidnet predict`` writes (nibabel's order), and the
    4×4 ``affine`` from voxel index to RAS+ millimetres that places them (nibabel's, 3D
    Slicer's)."""

    p_cac: float
    class_probabilities: dict[str, float]
    predicted_label: str
    heatmaps: dict[str, np.ndarray] = field(repr=False)
    affine: np.ndarray = field(repr=False)


@dataclass
class Model:
    """A loaded model (or seed ensemble) on a device; :meth:`predict` classifies scans."""

    members: list[Trained]

    @property
    def checkpoints(self) -> list[Path]:
        return [m.path for m in self.members]

    def predict(self, scan: str | Path) -> Prediction:
        """Read, preprocess and classify one scan, with its heat maps; bad input raises
        :class:`aidnet.errors.AidnetError` with one line naming the file."""
        from aidnet.evaluation.predictions import class_columns
        from aidnet.pipeline.predict import CLASS_NAMES, explain_scan

        explained = explain_scan(self.members, Path(scan))
        names = CLASS_NAMES[self.members[0].num_classes]
        columns = class_columns(explained.probs)
        from aidnet.io.nifti import nifti_layout

        maps, affine = {}, None
        for name, original in explained.maps.items():
            maps[name], affine = nifti_layout(*explained.geometry.to_source(original))
            maps[name] = np.ascontiguousarray(maps[name])
        if affine is None:  # no maps: the grid's own affine
            blank = np.zeros(explained.volume.shape, np.float32)
            _, affine = nifti_layout(*explained.geometry.to_source(blank))
        return Prediction(
            p_cac=float(columns["p_cac"]),
            class_probabilities=dict(zip(names, map(float, explained.probs), strict=True)),
            predicted_label=names[columns["predicted"]],
            heatmaps=maps,
            affine=np.asarray(affine, dtype=np.float64),
        )


def load_model(
    checkpoint: str | Path | list[str | Path] | None = None, device: str | None = None
) -> Model:
    """The model of a run folder or checkpoint file (several: a seed ensemble); None loads
    the shipped default model (:func:`aidnet.weights.default_checkpoint`). ``device``: cpu,
    cuda, cuda:1 …; default the GPU when there is one."""
    from aidnet.pipeline.common import load_ensemble
    from aidnet.pipeline.device import resolve_device
    from aidnet.weights import default_checkpoint

    if checkpoint is None:
        paths = [default_checkpoint()]
    elif isinstance(checkpoint, (str, Path)):
        paths = [Path(checkpoint)]
    else:
        paths = [Path(p) for p in checkpoint]
    return Model(load_ensemble(paths, resolve_device(device)))
