"""`dvc plots show` works offline: DVC's page template is ours, with Vega inlined (no CDN)."""

from __future__ import annotations

import configparser
import re

from tests.conftest import REPO_ROOT


def test_dvc_uses_the_offline_template_and_it_loads_nothing_from_the_network():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    template = REPO_ROOT / ".dvc" / config["plots"]["html_template"]
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page  # where DVC puts the plots
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script loaded from elsewhere"
    for library in ("vega-5.20.2", "vega-lite-5.2.0", "vega-embed-6.18.2"):
        assert f"/* {library}" in page  # inlined, with its licence notice
