"""Config: defaults == configs/default.yaml, strict keys with hints, types, precedence, round
trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from braintseg.config import Config, dump_config, load_config, read_yaml, to_dict
from braintseg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_equals_dataclass_defaults_and_lists_every_key():
    raw = read_yaml(ROOT / "configs" / "default.yaml")
    assert raw == to_dict(Config()), "configs/default.yaml must list every key with its default"
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


def test_every_default_yaml_key_has_a_comment():
    lines = (ROOT / "configs" / "default.yaml").read_text().splitlines()
    keyed = [ln for ln in lines
             if ln.startswith("  ") and ":" in ln and not ln.strip().startswith("#")]
    uncommented = [ln for ln in keyed if "#" not in ln]
    assert not uncommented, f"keys without a comment: {uncommented}"


def test_smoke_config_loads():
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert cfg.data.crop == "auto" and cfg.model.start_channels == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param("train.epoch=3", "did you mean 'train.epochs'", id="typo-key"),
        pytest.param("trian.epochs=3", "did you mean 'train'", id="typo-section"),
        pytest.param("train.view=sagitall", "'axial' | 'sagittal' | 'coronal'", id="misspelt-view"),
        pytest.param("train.epochs=ten", "train.epochs must be int", id="wrong-type"),
        pytest.param("train.batch_size=true", "train.batch_size must be int", id="bool-not-int"),
        pytest.param("data.crop=[1,2,3,4]", "received 4 values", id="crop-4-values"),
        pytest.param("data.crop=[10,5,0,8,0,8]", "0 <= start < stop", id="crop-reversed"),
        pytest.param("data.n_folds=1", "data.n_folds must be >= 2", id="one-fold"),
        pytest.param("model.downsample=3", "model.downsample must be 1, 2 or 4; received 3",
                     id="downsample-3"),
        pytest.param("epochs=3", "unknown key 'epochs'", id="no-section"),
        pytest.param("train.epochs", "KEY=VALUE", id="no-equals"),
        pytest.param("predict.output_pattern=../{case}.nii.gz", "no '/'", id="pattern-escapes"),
        pytest.param("predict.output_pattern={case}_{fold}.nii.gz", "no other field",
                     id="pattern-unknown-field"),
        pytest.param("predict.output_pattern={case}.nii.gz}", "no other field",
                     id="pattern-unbalanced"),
        pytest.param("predict.output_pattern={case}.png", "end in .nii.gz or .nii",
                     id="pattern-not-nifti"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_key_in_file_names_file_and_hint(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  start_channel: 32\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "model.start_channels" in str(info.value)


def test_precedence_set_over_file_over_default(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\n")
    cfg = load_config(path, ["train.epochs=2"])
    assert cfg.train.epochs == 2  # --set beats the file
    assert cfg.train.batch_size == 4  # file beats the default
    assert cfg.train.learning_rate == Config().train.learning_rate  # default kept


def test_int_accepted_for_float_and_crop_auto():
    cfg = load_config(None, ["train.learning_rate=1", "data.crop=auto"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.crop == "auto"


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["train.view=coronal", "data.crop=[0,16,0,16,0,8]"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["view"] == "coronal"
    assert load_config(tmp_path / "config.yaml") == cfg
    assert not list(tmp_path.glob(".*tmp"))


def test_replace_returns_validated_copy():
    cfg = Config().replace(train={"epochs": 3})
    assert cfg.train.epochs == 3 and Config().train.epochs == 100
    with pytest.raises(ConfigError, match="train.epochs must be >= 1"):
        Config().replace(train={"epochs": 0})


def test_yaml_is_never_evaluated(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert "\n" not in str(info.value)  # one line, however many lines YAML's message has
