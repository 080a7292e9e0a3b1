from pathlib import Path

import pytest
import yaml

from imgclf.compose import compose_params
from imgclf.config import Config, ConfigError, config_from_dict, flatten, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    cfg = config_from_dict({})
    assert cfg.optimizer.name == "adam"
    assert (cfg.model.name, cfg.model.block) == ("resnet", "residual")


def test_unknown_key_fails_naming_it():
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        config_from_dict({"train": {"epoch": 3}})


def test_unknown_section_fails_naming_it():
    with pytest.raises(ConfigError, match="trian"):
        config_from_dict({"trian": {"epochs": 3}})


def test_wrong_type_fails_naming_key():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        config_from_dict({"train": {"epochs": "many"}})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"optimizer": {"name": "rmsprop"}}, "optimizer.name"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
        ({"model": {"dropout": 1.0}}, "model.dropout"),
        ({"train": {"monitor": "loss"}}, "train.monitor"),
        ({"optimizer": {"schedule": "linear"}}, "optimizer.schedule"),
        ({"model": {"block": "dense"}}, "model.block"),
        ({"augment": {"perspective": 1.5}}, "augment.perspective"),
        ({"augment": {"perspective_scale": -0.1}}, "augment.perspective_scale"),
        ({"data": {"fit": "letterbox"}}, "data.fit"),
    ],
)
def test_out_of_range_values_fail(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(raw)


def test_load_config_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_committed_params_match_composed_conf():
    """params.yaml is the snapshot of conf/: they must never drift apart."""
    composed = compose_params(REPO_ROOT / "conf")
    assert (REPO_ROOT / "params.yaml").read_text(encoding="utf-8") == composed
    assert isinstance(load_config(REPO_ROOT / "params.yaml"), Config)


def test_compose_selects_group_and_overrides():
    text = compose_params(REPO_ROOT / "conf", ["optimizer=sgd", "train.epochs=5"])
    raw = yaml.safe_load(text)
    assert raw["optimizer"]["name"] == "sgd"
    assert raw["optimizer"]["momentum"] == pytest.approx(0.9)
    assert raw["train"]["epochs"] == 5


def test_compose_rejects_a_bad_override():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        compose_params(REPO_ROOT / "conf", ["train.epochs=lots"])


def test_flatten_prefixes_sections():
    flat = flatten(config_from_dict({}), ("optimizer",))
    assert flat["optimizer.name"] == "adam"
    assert all(k.startswith("optimizer.") for k in flat)
