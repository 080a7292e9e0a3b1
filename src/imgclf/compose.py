"""Compose ``conf/`` (Hydra) plus overrides into a validated config: the one way to build one.

``params.yaml`` (what DVC stages read), ``imgclf-train``, ``scripts/bench.py`` and the tests all
start from this composition, so a value changed in one ``conf/`` file reaches every one of them.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from imgclf.config import Config, ConfigError
from imgclf.fileio import write_text
from imgclf.lineage import project_root
from imgclf.params import config_from_dict, schema_keys

ENV_CONF_DIR = "IMGCLF_CONF_DIR"
FIX_OVERRIDE = "fix the override or conf/"


def conf_dir() -> Path:
    """The Hydra config folder: ``$IMGCLF_CONF_DIR``, else ``<project root>/conf``.

    Outside a project (``imgclf validate`` on any folder), the ``conf/`` beside this package's
    source, the values every project starts from, where there is one.
    """
    env = os.environ.get(ENV_CONF_DIR)
    if env:
        return Path(env).resolve()
    conf = project_root() / "conf"
    source_conf = Path(__file__).resolve().parents[2] / "conf"  # src/imgclf/compose.py
    if not (conf / "config.yaml").is_file() and (source_conf / "config.yaml").is_file():
        return source_conf
    return conf


def compose_dict(conf: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """``conf/config.yaml`` composed with Hydra ``overrides``, resolved, as plain data.

    Raises:
        ConfigError: one line naming the override Hydra could not apply (not validated yet).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if not (conf / "config.yaml").is_file():
        raise ConfigError(
            f"{conf}/config.yaml not found: run inside the project or set {ENV_CONF_DIR}"
        )
    try:
        with initialize_config_dir(str(conf.resolve()), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides or []))
    except HydraException as exc:
        raise ConfigError(
            f"{conf} + {overrides or []}: {_hydra_problem(exc)}; {FIX_OVERRIDE}"
        ) from exc
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items()}


def _hydra_problem(exc: Exception) -> str:
    """Hydra's multi-line report as one phrase, naming the key (and the closest real one)."""
    key = getattr(exc.__cause__, "full_key", None)
    if key:
        close = difflib.get_close_matches(str(key), schema_keys(str(key)), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (to add it: +{key}=...)"
        return f"unknown key '{key}'{hint}"
    first = str(exc).strip().splitlines()[0]
    options = getattr(exc, "options", None)  # MissingConfigException: the group's choices
    return f"{first} (available: {', '.join(options)})" if options else first


def compose_config(conf: Path | None = None, overrides: list[str] | None = None) -> Config:
    """The validated :class:`Config` of ``conf`` (default :func:`conf_dir`) plus ``overrides``."""
    conf = conf or conf_dir()
    return config_from_dict(
        compose_dict(conf, overrides), source=f"{conf} + {overrides or []}", fix=FIX_OVERRIDE
    )


def compose_params(conf: Path, overrides: list[str] | None = None) -> str:
    """Return the YAML text of ``conf/config.yaml`` composed with ``overrides``.

    The result is validated against the schema, so a bad override fails here, naming the key.
    """
    raw = compose_dict(conf, overrides)
    config_from_dict(raw, source=f"{conf} + {overrides or []}", fix=FIX_OVERRIDE)
    return OmegaConf.to_yaml(OmegaConf.create(raw))


def write_params(conf: Path, out: Path, overrides: list[str] | None = None) -> bool:
    """Write the composition to ``out``; return whether the file changed."""
    text = compose_params(conf, overrides)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return False
    write_text(out, text)
    return True
