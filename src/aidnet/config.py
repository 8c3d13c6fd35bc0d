"""Run configuration: one frozen dataclass, presets as YAML files, CLI overrides on top.

A setting's value comes from the first of these that names it: a CLI flag; the YAML file
given (``--preset my.yaml``); the preset that file names with ``preset:`` (``demo`` when it
names none; a file that sets every setting, as a run's saved config.yaml does, may carry any
label there); the field's default in :class:`Config`. A preset file is read the same way, from
its own name down. So each layer holds only what it changes, and a file that sets three keys
runs the preset's recipe with those three changed.

The resolved configuration is saved beside every checkpoint (``RUN/config.yaml``) and read back
as it is (:func:`read_saved_config`), with no preset under it: a resumed run keeps the settings
it started with whatever the presets say today.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from aidnet.errors import AidnetError
from aidnet.presets import DEFAULT_PRESET, PRESETS

#: the calcium head's evidence per map channel (``Config.evidence_pool``, models/heads.py)
EVIDENCE_POOLS = ("sum", "sum_peak")


@dataclass(frozen=True)
class Config:
    """Everything a training run depends on (the paper's recipe is the ``paper`` preset).

    A field's default is its value where no preset names it: off for every optional part, and
    for settings added over time the value that runs saved before them were trained with.
    """

    preset: str = DEFAULT_PRESET
    model: str = "aidnet"
    input_size: tuple[int, int, int] = (32, 48, 64)  # (Z, Y, X) network grid
    features: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.0
    head: str = "calcium"  # AID-Net/ID-Net map before GAP: calcium, gated or stage (see models)
    strategy: int = 2  # 1: two classes (CAC yes/no); 2: three classes (0, 1–399, >=400)
    lambda_: float = 0.001  # weight of the contrastive loss
    margin: float = 1.0
    # weight of the evidence penalty on CAC-negative scans (calcium head only; losses.py)
    negative_evidence: float = 0.0
    # that penalty on the negatives' evidence itself ("absolute") or on how far it exceeds the
    # batch's CAC-positive scans' ("relative": a fading map does not lower it)
    negative_mode: str = "absolute"
    # calcium head: normalise the evidence in training with the batch's statistics ("batch",
    # BatchNorm), with running ones ("running", batch-independent) or with those of the first
    # batch for the whole run ("fixed": the map's scale counts; models/heads.py)
    evidence_norm: str = "batch"
    # calcium head: the evidence each map channel gives the classifier — the log of its sum over
    # the scan ("sum"), or that and the log of its largest voxel ("sum_peak": one small plaque
    # is not drowned by faint evidence spread over much other calcium; models/heads.py)
    evidence_pool: str = "sum"
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant (paper) or cosine (decays to 0 at the end)
    weight_decay: float = 0.0
    # decay per step of the moving average of the weights that validation, model selection and
    # best.pt use (training/average.py); 0 turns it off and selects the last step's weights
    ema_decay: float = 0.0
    # largest global gradient norm per step; a larger one is scaled down to it (0: off)
    grad_clip: float = 0.0
    # best.pt is chosen among the epochs after this fraction of them (0: every epoch); before the
    # window it holds the best epoch so far, which the window's first epoch replaces
    select_from: float = 0.0
    batch_size: int = 2
    epochs: int = 100
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    # preprocessing: bone that crosses the region of interest's edge (ribs, sternum, spine) out
    # of the calcium channel and dimmed to 130 HU in the CT channel (preprocess/sample.py)
    dim_wall_bone: bool = False
    # preprocessing: bone on the lungs' outer side (the lung lies between it and the mediastinum:
    # ribs and cartilage inside the region's margin) treated the same way (preprocess/sample.py)
    dim_outer_bone: bool = False
    # preprocessing: the calcium channel holds each candidate's density, (HU − 130) / 270 capped
    # at 1, instead of 1: noise specks just over 130 HU weigh almost nothing (preprocess/sample.py)
    calcium_density: bool = False
    # preprocessing: a scan whose soft tissue is noisier than the training phantom's (a sharp
    # kernel, a thin low-dose slice) is smoothed in-plane down to that noise first, so noise
    # does not flood the calcium channel (preprocess/noise.py)
    noise_ceiling: bool = False
    augment: bool = True
    max_shift: int = 2  # voxels of random translation on the network grid
    # with augment: scanner variation on the CT channel — a random HU offset and gain, noise and
    # a blur along z (thicker slices); never a left-right flip (data/augment.py)
    augment_intensity: bool = False
    # with augment: posture — a small in-plane rotation and scale of both channels, the
    # calcium candidates moved voxel by voxel so none is lost (data/augment.py)
    augment_posture: bool = False
    num_workers: int = 0  # DataLoader worker processes
    amp: bool = True  # mixed precision on GPUs (bfloat16 where supported, else float16)
    # bfloat16 autocast on CPUs too (training and validation): about twice as fast where the CPU
    # has native bfloat16 (AVX512-BF16, AMX), slower where it has not
    cpu_amp: bool = False
    # times the training guard may go back to the last good epoch end with the learning rate
    # halved before it stops the run (training/guard.py; 0: stop at the first event)
    guard_recoveries: int = 3
    checkpoint_minutes: float = 10.0  # also save last.pt this often within an epoch
    checkpoint_steps: int = 0  # and/or every this many steps (0: off)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return 2 if self.strategy == 1 else 3

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        out["features"] = list(self.features)
        out["lambda"] = out.pop("lambda_")
        return out

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise AidnetError(f"{f.name} must be true or false, not {value!r}")
        if self.strategy not in (1, 2):
            raise AidnetError(f"strategy must be 1 or 2, not {self.strategy}")
        if len(self.input_size) != 3 or min(self.input_size) < 8:
            raise AidnetError(f"input_size must be three sizes >= 8, not {self.input_size}")
        if self.lambda_ < 0:
            raise AidnetError(f"lambda must be >= 0, not {self.lambda_}")
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise AidnetError("val_fraction and test_fraction must lie between 0 and 1")
        if not self.negative_evidence >= 0:
            raise AidnetError(f"negative_evidence must be >= 0, not {self.negative_evidence}")
        if not 0 <= self.ema_decay < 1:
            raise AidnetError(f"ema_decay must be >= 0 and < 1, not {self.ema_decay}")
        if not self.grad_clip >= 0:
            raise AidnetError(f"grad_clip must be >= 0 (0: off), not {self.grad_clip}")
        if not 0 <= self.select_from < 1:
            raise AidnetError(f"select_from must be >= 0 and < 1, not {self.select_from}")
        if self.evidence_norm not in ("batch", "running", "fixed"):
            raise AidnetError(
                f"evidence_norm must be batch, running or fixed, not {self.evidence_norm}"
            )
        if self.evidence_pool not in EVIDENCE_POOLS:
            raise AidnetError(
                f"evidence_pool must be {' or '.join(EVIDENCE_POOLS)}, not {self.evidence_pool}"
            )
        if self.head not in ("stage", "calcium", "gated"):
            raise AidnetError(f"head must be stage, calcium or gated, not {self.head}")
        if self.head == "gated" and self.model != "aidnet":
            raise AidnetError(f"head gated needs AID-Net's attention gate; {self.model} has none")
        if self.lr_schedule not in ("constant", "cosine"):
            raise AidnetError(f"lr_schedule must be constant or cosine, not {self.lr_schedule}")
        if self.checkpoint_minutes <= 0 or self.checkpoint_steps < 0:
            raise AidnetError("checkpoint_minutes must be > 0 and checkpoint_steps >= 0")
        if not self.lr > 0:
            raise AidnetError(f"lr must be > 0, not {self.lr}")
        if self.negative_mode not in ("absolute", "relative"):
            raise AidnetError(
                f"negative_mode must be absolute or relative, not {self.negative_mode}"
            )
        if self.guard_recoveries < 0:
            raise AidnetError(f"guard_recoveries must be >= 0, not {self.guard_recoveries}")
        if self.epochs < 1 or self.batch_size < 1:
            raise AidnetError("epochs and batch_size must be >= 1")
        return self


def _settings(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A mapping of configuration keys checked and in :class:`Config`'s terms (``lambda`` is
    ``lambda_``, sizes are tuples); an unknown key is one AidnetError line."""
    data = dict(data)
    if "lambda" in data:
        data["lambda_"] = data.pop("lambda")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AidnetError(f"{source}: unknown configuration keys: {', '.join(unknown)}")
    for key in ("input_size", "features"):
        if key in data:
            data[key] = tuple(int(v) for v in data[key])
    return data


def _from_mapping(data: dict[str, Any], source: str) -> Config:
    return Config(**_settings(data, source))


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AidnetError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise AidnetError(f"{source}: expected a mapping of configuration keys")
    return _settings(data, source)


def preset_settings(name: str) -> dict[str, Any]:
    """What the preset ``name`` sets (its file's keys, in :class:`Config`'s terms)."""
    text = resources.files("aidnet.presets").joinpath(f"{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def _base_settings(own: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the YAML file ``path`` (its settings ``own``) starts from: the preset it names, or
    ``demo``. A file that sets everything (a run's saved config.yaml) starts from nothing, so
    its ``preset`` may be any label; a file that leaves settings out must name a preset."""
    name = own.get("preset", DEFAULT_PRESET)
    if name in PRESETS:
        return preset_settings(name)
    if set(own) >= {f.name for f in dataclasses.fields(Config)} - {"preset"}:
        return {}
    raise AidnetError(
        f"{path}: preset {name!r} is not one of {', '.join(PRESETS)}: a configuration file "
        "that leaves settings out starts from the preset it names (or from "
        f"{DEFAULT_PRESET} without a preset key)"
    )


def load_config(preset_or_path: str, **overrides: Any) -> Config:
    """A preset name (tiny, demo, paper, full) or a YAML file, with non-None overrides applied.

    A YAML file starts from the preset its ``preset`` key names (``demo`` without one) and
    changes the keys it sets; see the module docstring and :func:`_base_settings`.
    """
    path = Path(preset_or_path)
    if preset_or_path in PRESETS:
        settings = preset_settings(preset_or_path)
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        own = _read_yaml(path.read_text(), str(path))
        settings = {**_base_settings(own, path), **own}
    else:
        raise AidnetError(
            f"{preset_or_path}: not a preset ({', '.join(PRESETS)}) nor a YAML config file"
        )
    config = Config(**settings)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        config = dataclasses.replace(config, **changes)
    return config.validate()


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_saved_config(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AidnetError(f"{path}: cannot read the run configuration ({exc})") from None
    if isinstance(data, dict) and data.get("model") in ("aidnet", "idnet"):
        data.setdefault("head", "stage")  # a run saved before the calcium head existed
    return _from_mapping(data, str(path)).validate()
