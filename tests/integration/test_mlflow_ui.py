"""The MLflow UI as users see it: a real headless Chromium over `imgclf ui` (`make ui`).

The session's tiny pipeline plus a second, shorter training run and an export: the printed URL
must open the training view (not MLflow 3's GenAI view) listing the training runs with the
comparison metrics as columns and without ingest's run; the compare view must put both runs'
figures side by side; the version's page must show its model card.

``IMGCLF_SCREENSHOTS=<folder>`` keeps the three screenshots there (docs/img/ was made so).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from imgclf.stages import evaluate, export, train
from tests.conftest import write_params
from tests.integration.browser import INSTALL_HINT, chromium, chromium_path
from tests.integration.conftest import DVC_EXP_NAME, copy_trained

# A browser, the MLflow UI server and a second training run: the slow group (CI runs it).
pytestmark = pytest.mark.slow

needs_chromium = pytest.mark.skipif(chromium_path() is None, reason=INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def project(trained_tiny, tmp_path_factory):
    """The tiny pipeline's copy with a second training run (1 epoch) and one export."""
    work = tmp_path_factory.mktemp("ui")
    uri = copy_trained(trained_tiny, work)
    (work / "dvc.yaml").write_text("stages: {}\n")
    cfg = trained_tiny.cfg
    write_params(work / "params.yaml", cfg)
    art = work / "artifacts"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("DVC_EXP_NAME", DVC_EXP_NAME)
        mp.chdir(work)
        exported = export.run(
            cfg,
            preprocess_dir=art / "preprocess",
            train_dir=art / "train",
            evaluate_dir=art / "evaluate",
            out_dir=art / "export",
        )
        cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
        mp.setenv("DVC_EXP_NAME", "one-epoch")
        second = train.run(cfg2, in_dir=art / "preprocess", out_dir=work / "second" / "train")
        evaluate.run(
            cfg2,
            preprocess_dir=art / "preprocess",
            train_dir=work / "second" / "train",
            out_dir=work / "second" / "evaluate",
        )
    runs = [trained_tiny.results["train"].run_id, second.run_id]
    return {"work": work, "uri": uri, "cfg": cfg, "version": exported.version, "runs": runs}


@pytest.fixture(scope="module")
def ui(project):
    """`imgclf ui` on a free port; yields (base URL, the training view URL it printed)."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": project["uri"]}
    env.pop("DVC_ROOT", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("imgclf")), "ui", "--port", str(port), "--no-browser"],
        cwd=project["work"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        printed = []
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"imgclf ui exited: {''.join(printed)}"
            printed.append(line)
            if line.startswith("MLflow UI (training runs): "):
                break
        url = printed[-1].split(": ", 1)[1].strip()
        yield f"http://127.0.0.1:{port}/", url, printed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# For the pictures only: close MLflow's assistant panel and the shared-view banner, and open
# the confusion matrices of both runs in the compare view's artifact pane.
TIDY = """
for (const id of ["mlflow.assistant.chat_panel.close",
                  "mlflow.experiment_page.shared_view.dismiss"])
  document.querySelector(`[data-component-id="${id}"]`)?.click();
"""
SHOW_CONFUSION = """
const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walk.nextNode(); n; n = walk.nextNode()) {
  if (n.textContent.includes("confusion_matrix.png")) {
    n.parentElement.click();
    n.parentElement.scrollIntoView({block: "center"});
    break;
  }
}
"""


def _shots() -> Path | None:
    folder = os.environ.get("IMGCLF_SCREENSHOTS")
    return Path(folder) if folder else None


@needs_chromium
def test_ui_shows_training_runs_with_metric_columns_and_the_model_card(project, ui, tmp_path):
    base, url, printed = ui
    # The training view: the classic runs table with the project's saved columns.
    assert "workflowType=machine_learning" in url and "viewStateShareKey=" in url
    # Nothing but the two URL lines on the console (mlflow's warnings go to mlruns/ui.log).
    assert [p for p in printed if p.strip()] == printed[-1:], printed
    name, version = project["cfg"].mlflow.registered_model_name, project["version"]
    ids = json.dumps(project["runs"])
    experiment = re.search(r"#/experiments/(\d+)/", url)
    assert experiment is not None, url
    exps = json.dumps([experiment.group(1)])
    ml = "workflowType=machine_learning"
    compare = f"{base}#/compare-runs?runs={quote(ids)}&experiments={quote(exps)}&{ml}"
    shots = _shots()

    async def drive() -> dict[str, str]:
        seen = {}
        async with chromium(tmp_path / "profile") as page:
            await page.goto(url)
            seen["runs"] = await page.wait_for_text(
                "train-tiny-exp", "train-one-epoch", "test_leakfree_accuracy", timeout=120
            )
            if shots:
                await page.evaluate(TIDY)
                await asyncio.sleep(2)  # let the columns settle before the picture
                await page.screenshot(shots / "mlflow-runs.png")
            await page.goto(compare)
            seen["compare"] = await page.wait_for_text("confusion_matrix.png", timeout=90)
            if shots:
                await page.evaluate(TIDY + SHOW_CONFUSION)
                await asyncio.sleep(4)
                await page.screenshot(shots / "mlflow-compare.png")
            await page.goto(f"{base}#/models/{name}/versions/{version}?{ml}")
            seen["version"] = await page.wait_for_text("Known limits", timeout=90)
            if shots:
                await page.evaluate(TIDY)
                await asyncio.sleep(2)
                await page.screenshot(shots / "mlflow-model-version.png")
        return seen

    seen = asyncio.run(drive())
    runs = seen["runs"]
    # Ingest's run lives in its own experiment ("<name>-data"), never among the training runs.
    assert "ingest-" not in runs
    for column in ("test_leakfree_accuracy", "test_accuracy"):
        assert column in runs
    assert "No data available" not in runs  # the GenAI view's empty state
    assert "learning_curves.png" in seen["compare"] and "misclassified.png" in seen["compare"]
    card = seen["version"]
    assert f"{name} v{version}" in card and "smoke" in card
    assert "leak-free accuracy" in card and "Per class" in card and "Export formats" in card


def test_registry_card_prints_the_same_card(project, monkeypatch, capsys):
    from imgclf import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", project["uri"])
    monkeypatch.chdir(project["work"])
    assert cli.main(["registry", "--card", project["version"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {project['cfg'].mlflow.registered_model_name} v")
    assert "## Known limits" in out and "| onnx | yes |" in out
