"""One source of defaults: a YAML file runs its preset's recipe with the keys it sets changed;
a saved run configuration is read as it was saved."""

import dataclasses

import pytest
import yaml

from aidnet.config import (
    DEFAULT_PRESET,
    PRESETS,
    Config,
    load_config,
    read_saved_config,
    save_config,
)
from aidnet.errors import AidnetError


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_a_partial_yaml_gets_the_default_presets_settings(tmp_path):
    demo = load_config(DEFAULT_PRESET)
    mine = load_config(_yaml(tmp_path, "epochs: 3\nlambda: 0.01\n"))
    assert mine == dataclasses.replace(demo, epochs=3, lambda_=0.01)
    # the preset's recipe, not the dataclass's fallbacks where the two differ
    fallback = Config()
    changed = ("epochs", "lambda_")
    recipe = [
        name
        for name in (f.name for f in dataclasses.fields(Config))
        if getattr(demo, name) != getattr(fallback, name) and name not in changed
    ]
    assert len(recipe) >= 3
    assert all(getattr(mine, name) == getattr(demo, name) for name in recipe)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_yaml_starts_from_the_preset_it_names(tmp_path, preset):
    mine = load_config(_yaml(tmp_path, f"preset: {preset}\nseed: 7\nbatch_size: 1\n"))
    assert mine == dataclasses.replace(load_config(preset), seed=7, batch_size=1)
    assert mine.preset == preset


def test_what_the_yaml_says_wins_over_the_preset_and_flags_over_both(tmp_path):
    path = _yaml(tmp_path, "preset: full\ngrad_clip: 0\nhead: stage\ninput_size: [16, 24, 32]\n")
    mine = load_config(path)
    assert (mine.grad_clip, mine.head, mine.input_size) == (0, "stage", (16, 24, 32))
    assert mine.negative_mode == "relative" and mine.epochs == 100  # the rest is full's
    assert load_config(path, grad_clip=5.0, epochs=None).grad_clip == 5.0


def test_a_yaml_naming_no_preset_we_have_is_one_line_unless_it_sets_everything(tmp_path):
    with pytest.raises(AidnetError, match="preset 'mystudy' is not one of tiny, demo"):
        load_config(_yaml(tmp_path, "preset: mystudy\nepochs: 3\n"))
    # a complete recipe (a run's saved config.yaml, relabelled) needs no preset under it
    complete = dataclasses.replace(load_config("tiny"), preset="mystudy", epochs=3)
    save_config(complete, tmp_path / "mine.yaml")
    assert load_config(str(tmp_path / "mine.yaml")) == complete
    with pytest.raises(AidnetError, match="unknown configuration keys: learning_rate"):
        load_config(_yaml(tmp_path, "preset: paper\nlearning_rate: 0.1\n"))


def test_a_saved_configuration_is_read_as_saved_without_a_preset_under_it(tmp_path):
    """A resumed run keeps what it started with: a key its config.yaml lacks (saved before the
    setting existed) takes the dataclass's value, never today's preset's."""
    saved = tmp_path / "config.yaml"
    save_config(load_config("demo"), saved)
    assert read_saved_config(saved) == load_config("demo")
    data = yaml.safe_load(saved.read_text())
    del data["grad_clip"], data["select_from"]
    saved.write_text(yaml.safe_dump(data))
    old = read_saved_config(saved)
    assert (old.grad_clip, old.select_from) == (0.0, 0.0)
    assert load_config("demo").grad_clip == 20.0


def test_preprocessing_setting_travels_from_the_preset_to_the_checkpoint():
    """Each later preprocessing option (``dim_wall_bone``, ``dim_outer_bone``,
    ``calcium_density``, ``noise_ceiling``) of a configuration reaches its cache, its
    checkpoint's spec and the model rebuilt from it, on its own; a checkpoint from before the
    settings preprocesses as before."""
    from pathlib import Path

    from aidnet.inference import Trained
    from aidnet.preprocess.config import LATER_OPTIONS, for_training
    from aidnet.training.loop import model_spec

    assert set(LATER_OPTIONS) == {
        "dim_wall_bone",
        "dim_outer_bone",
        "calcium_density",
        "noise_ceiling",
    }
    keys = {for_training(load_config("tiny")).key()}
    for name in LATER_OPTIONS:
        config = load_config("tiny", **{name: True})
        settings = for_training(config)
        assert [getattr(settings, n) for n in LATER_OPTIONS] == [n == name for n in LATER_OPTIONS]
        assert settings.size == config.input_size
        keys.add(settings.key())
        spec = model_spec(config)
        assert spec[name] is True
        rebuilt = Trained(None, spec, Path("x.pt"), None).preprocess  # type: ignore[arg-type]
        assert rebuilt == settings
    assert len(keys) == len(LATER_OPTIONS) + 1  # each option its own cache entries
    spec = model_spec(load_config("tiny"))
    for name in LATER_OPTIONS:
        del spec[name]
    old = Trained(None, spec, Path("x.pt"), None).preprocess  # type: ignore[arg-type]
    assert not any(getattr(old, n) for n in LATER_OPTIONS)
    assert old.key() == for_training(load_config("tiny")).key()


def test_a_switch_that_is_not_true_or_false_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ndim_wall_bone: maybe\n")
    with pytest.raises(AidnetError, match="dim_wall_bone must be true or false, not 'maybe'"):
        load_config(str(bad))


def test_the_gated_head_needs_aidnets_attention_gate():
    config = load_config("tiny", head="gated")
    assert config.head == "gated"
    with pytest.raises(AidnetError, match="head gated needs AID-Net's attention gate; idnet"):
        dataclasses.replace(config, model="idnet").validate()
    with pytest.raises(AidnetError, match="head must be stage, calcium or gated, not pixel"):
        dataclasses.replace(config, head="pixel").validate()
