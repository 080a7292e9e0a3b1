import copy
import dataclasses
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from imgclf.compose import compose_config, compose_params
from imgclf.config import Config, ConfigError, ModelConfig, flatten
from imgclf.params import config_from_dict, load_config
from tests.conftest import TINY_OVERRIDE, composed_conf, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = REPO_ROOT / "conf"


def _with(section: str, **values) -> dict:
    """conf/'s composition with ``values`` set in ``section`` (a whole config, not validated)."""
    raw = copy.deepcopy(composed_conf())
    raw.setdefault(section, {}).update(values)
    return raw


def test_conf_composes_to_a_valid_config():
    cfg = compose_config(CONF)
    assert cfg.optimizer.name == "adam"
    assert (cfg.model.name, cfg.model.block) == ("resnet", "residual")


def test_schemas_hold_no_values():
    """The values live in conf/ only: a schema built without them is an error, not a default."""
    for name, section in typing.get_type_hints(Config).items():
        for f in dataclasses.fields(section):
            assert f.default is f.default_factory is dataclasses.MISSING, f"{name}.{f.name}"
    with pytest.raises(TypeError):
        ModelConfig()  # type: ignore[call-arg]


def test_a_conf_value_reaches_the_tests_config(tmp_path):
    """tiny_config is conf/ plus a small override: what the override leaves alone is conf/'s."""
    conf = shutil.copytree(CONF, tmp_path / "conf")
    default = conf / "train" / "default.yaml"
    default.write_text(default.read_text(encoding="utf-8").replace("seed: 42", "seed: 7"))
    assert compose_config(conf).train.seed == 7
    composed = compose_config(CONF)
    tiny = tiny_config()
    assert (tiny.train.seed, tiny.augment, tiny.export) == (
        composed.train.seed,
        composed.augment,
        composed.export,
    )
    assert tiny.train.epochs == TINY_OVERRIDE["train"]["epochs"] != composed.train.epochs


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epochs": 3}}, "no value for 'data'"),
        (
            {k: v for k, v in composed_conf().items() if k != "promote"},
            "no value for 'promote'",
        ),
    ],
)
def test_a_partial_config_fails_naming_the_missing_key(raw, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_a_missing_key_in_a_section_is_named(tmp_path):
    raw = copy.deepcopy(composed_conf())
    del raw["train"]["patience"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ConfigError, match=r"params\.yaml: no value for 'train\.patience'.*make params"
    ):
        load_config(params)


def test_unknown_key_fails_naming_it_and_the_closest():
    with pytest.raises(
        ConfigError, match=r"unknown key 'train\.epoch' \(did you mean 'train\.epochs'"
    ):
        config_from_dict(_with("train", epoch=3))


def test_unknown_section_fails_naming_it():
    with pytest.raises(ConfigError, match=r"unknown key 'trian' \(did you mean 'train'"):
        config_from_dict(_with("trian", epochs=3))


def test_wrong_type_fails_naming_key():
    with pytest.raises(ConfigError, match=r"bad value for 'train\.epochs'"):
        config_from_dict(_with("train", epochs="many"))


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("optimizer", {"name": "rmsprop"}, "optimizer.name"),
        ("data", {"val_fraction": 1.5}, "data.val_fraction"),
        ("model", {"dropout": 1.0}, "model.dropout"),
        ("train", {"monitor": "loss"}, "train.monitor"),
        ("optimizer", {"schedule": "linear"}, "optimizer.schedule"),
        ("model", {"block": "dense"}, "model.block"),
        ("augment", {"perspective": 1.5}, "augment.perspective"),
        ("augment", {"perspective_scale": -0.1}, "augment.perspective_scale"),
        ("data", {"fit": "letterbox"}, "data.fit"),
    ],
)
def test_out_of_range_values_fail(section, values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(_with(section, **values))


def test_load_config_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_committed_params_match_composed_conf():
    """params.yaml is the snapshot of conf/: they must never drift apart."""
    composed = compose_params(CONF)
    assert (REPO_ROOT / "params.yaml").read_text(encoding="utf-8") == composed
    assert load_config(REPO_ROOT / "params.yaml") == compose_config(CONF)


def test_compose_selects_group_and_overrides():
    text = compose_params(CONF, ["optimizer=sgd", "train.epochs=5"])
    raw = yaml.safe_load(text)
    assert raw["optimizer"]["name"] == "sgd"
    assert raw["optimizer"]["momentum"] == pytest.approx(0.9)
    assert raw["train"]["epochs"] == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochs=lots"], r"bad value for 'train\.epochs'"),
        (["+model.filterz=8"], r"unknown key 'model\.filterz' \(did you mean 'model\.filters'"),
        (["model.filterz=8"], r"unknown key 'model\.filterz' \(did you mean 'model\.filters'"),
        (["optimizer=rmsprop"], r"optimizer/rmsprop.*available: adam, adamw, sgd"),
    ],
)
def test_compose_rejects_a_bad_override_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        compose_params(CONF, overrides)
    assert "\n" not in str(info.value)


def test_flatten_prefixes_sections():
    flat = flatten(compose_config(CONF), ("optimizer",))
    assert flat["optimizer.name"] == "adam"
    assert all(k.startswith("optimizer.") for k in flat)
