"""What the install must provide beyond importable packages (see BENCHMARKS.md, no-op repro)."""

from __future__ import annotations

from ruamel.yaml import YAML
from ruamel.yaml.parser import Parser


def test_dvc_parses_yaml_with_libyaml():
    # DVC reads dvc.yaml, dvc.lock and params.yaml through ruamel.yaml's "safe" loader, 12
    # times per no-op `dvc repro`. ruamel.yaml 0.19 made its C parser an optional extra; without
    # ruamel.yaml.clib in requirements.lock the loader falls back to the pure-Python parser,
    # 4x slower, and no other test would notice.
    parser = YAML(typ="safe").Parser
    assert parser is not Parser, "ruamel.yaml.clib is missing: run `make setup`"
    assert parser.__name__ == "CParser"
