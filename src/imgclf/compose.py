"""Compose ``conf/`` (Hydra) into ``params.yaml`` as ``dvc exp run`` does, and validate it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from imgclf.config import config_from_dict
from imgclf.fileio import write_text


def compose_params(conf_dir: Path, overrides: list[str] | None = None) -> str:
    """Return the YAML text of ``conf_dir/config.yaml`` composed with ``overrides``.

    The result is validated against the schema, so a bad override fails here, naming the key.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    raw = OmegaConf.to_container(cfg)
    assert isinstance(raw, dict)
    config_from_dict({str(k): v for k, v in raw.items()}, source=f"{conf_dir} + {overrides or []}")
    return OmegaConf.to_yaml(cfg)


def write_params(conf_dir: Path, out: Path, overrides: list[str] | None = None) -> bool:
    """Write the composition to ``out``; return whether the file changed."""
    text = compose_params(conf_dir, overrides)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return False
    write_text(out, text)
    return True
