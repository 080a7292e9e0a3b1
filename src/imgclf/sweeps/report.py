"""A study's results: the best trial, ``best.yaml``, the table of trials and the parent's plots."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from imgclf import tracking
from imgclf.fileio import write_text
from imgclf.sweeps.study import format_value

log = logging.getLogger(__name__)


# --- results ----------------------------------------------------------------------------------


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or None when there is none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_config_text(overrides: Sequence[str], is_group: Callable[[str], bool], header: str) -> str:
    """A ``# @package _global_`` experiment config applying ``overrides`` (groups as defaults)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups: list[Any] = []
    values: dict[str, Any] = {}
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.get_key_element().lstrip("+~")
        # The sweep's own settings (sweep=cnn, hydra.*) would turn the experiment into a sweep.
        if key == "sweep" or key.startswith("hydra.") or ov.is_delete():
            continue
        if is_group(key):
            groups.append({f"override /{key}": ov.value()})
            continue
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = ov.value()
    body = yaml.safe_dump({"defaults": [*groups, "_self_"], **values}, sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return f"# @package _global_\n{comment}{body}"


def write_best_config(
    path: Path, study: optuna.Study, is_group: Callable[[str], bool]
) -> FrozenTrial | None:
    """Write the best trial's overrides as an experiment config (atomically); return the trial."""
    best = best_trial(study)
    if best is None:
        log.warning("no COMPLETE trial in study %s yet: %s not written", study.study_name, path)
        return None
    overrides = best.user_attrs.get("overrides") or [
        f"{k}={format_value(v)}" for k, v in best.params.items()
    ]
    header = (
        f"Best of Optuna study {study.study_name!r}: trial {best.number}, "
        f"{study.user_attrs.get('objective', 'objective')}={best.value:.4f}.\n"
        "Written by the imgclf_optuna sweeper; reproduce through the whole pipeline with\n"
        "  dvc exp run -S +experiment=best"
    )
    write_text(path, best_config_text(overrides, is_group, header))
    log.info("best trial %d written to %s", best.number, path)
    return best


def summary_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs run, RSS after it, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "epochs": t.user_attrs.get("epochs_run"),
                "rss_mb": t.user_attrs.get("rss_mb"),
                "params": " ".join(f"{k}={format_value(v)}" for k, v in t.params.items()),
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain fixed-width table (no extra dependency)."""
    if not rows:
        return "(no trials)"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    table = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def summary_text(study: optuna.Study) -> str:
    """The table of all the study's trials plus totals (epochs spent, best value)."""
    rows = summary_rows(study)
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    epochs = sum(int(r["epochs"] or 0) for r in rows)
    best = best_trial(study)
    objective = study.user_attrs.get("objective", "value")
    tail = (
        f"study {study.study_name!r}: {len(done)} done "
        f"({sum(r['state'] == 'PRUNED' for r in rows)} pruned), {len(rows)} in all, "
        f"{epochs} epochs spent"
    )
    if best is not None:
        tail += f"; best trial {best.number}: {objective}={best.value:.4f}"
    return f"{format_table(rows)}\n{tail}"


def log_study_report(study: optuna.Study, parent_run_id: str) -> None:
    """Optuna's plots (history, importances, intermediate values) and the table on the parent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "intermediate_values": ovm.plot_intermediate_values,
    }
    with tempfile.TemporaryDirectory(prefix="imgclf-optuna-") as tmp:
        folder = Path(tmp)
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" and small-sample notes
                    ax = plot(study)
                fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
                fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(fig)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                # e.g. importances need two COMPLETE trials with varying parameters
                log.info("no %s plot yet: %s", name, exc)
        write_text(folder / "trials.txt", summary_text(study) + "\n")
        tracking.log_artifacts_to(parent_run_id, folder, "optuna")
