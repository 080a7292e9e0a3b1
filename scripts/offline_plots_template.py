"""Write .dvc/plots/offline.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

DVC's default page loads the three scripts from a CDN, so `dvc plots show` is blank offline.
.dvc/config points `plots.html_template` at this file instead. The versions are the ones DVC's
renderer (dvc-render) asks the CDN for; to rebuild (e.g. after a dvc-render upgrade):

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    for f in vega-*.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
    python scripts/offline_plots_template.py /tmp

All three are BSD-3-Clause (University of Washington Interactive Data Lab); their notices are
kept at the top of each inlined script.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGES = (
    ("vega-5.20.2", "vega.min.js"),
    ("vega-lite-5.2.0", "vega-lite.min.js"),
    ("vega-embed-6.18.2", "vega-embed.min.js"),
)
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"


def main(root: Path) -> None:
    scripts = []
    for folder, name in PACKAGES:
        package = root / folder / "package"
        js = (package / "build" / name).read_text(encoding="utf-8")
        notice = (package / "LICENSE").read_text(encoding="utf-8").strip()
        # The page template is filled with str.replace on {placeholders}; none may hide inside.
        assert "</script" not in js and "{plot_divs}" not in js, name
        scripts.append(f"<script>/* {folder}\n{notice}\n*/\n{js}</script>")
    page = (
        "<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n"
        + "\n".join(scripts)
        + "\n    <style>\n        table {\n            border-spacing: 15px;\n        }\n"
        "    </style>\n</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page, encoding="utf-8")
    print(f"{OUT}: {len(page) // 1024} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
