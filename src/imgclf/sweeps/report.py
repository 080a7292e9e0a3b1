"""A study's results: the chosen trial, ``best.yaml``, the table of trials, the parent run's report.

The chosen trial of a single-objective study is its best. Of a multi-objective study
(``direction: [maximize, minimize]``, e.g. accuracy against model size) it is taken from the
Pareto front by one rule: the trials whose first objective is within ``pareto_tolerance`` of the
front's best first objective, and of those the best on the second objective (then the third...).
With the default tolerance 0 that is the best first objective, ties broken by the next ones.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from imgclf import tracking
from imgclf.fileio import write_text
from imgclf.sweeps.space import describe, format_value
from imgclf.sweeps.study import OBJECTIVE_ATTR, redact

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

    from imgclf.sweeps.settings import StudySettings

log = logging.getLogger(__name__)


# --- results ----------------------------------------------------------------------------------


def chosen_trial(study: optuna.Study, tolerance: float = 0.0) -> FrozenTrial | None:
    """The best COMPLETE trial, or the one the Pareto rule above picks; None before any."""
    front = study.best_trials
    if not front:
        return None
    signs = [1.0 if d.name == "MINIMIZE" else -1.0 for d in study.directions]
    best_first = min(signs[0] * t.values[0] for t in front)
    near = [t for t in front if signs[0] * t.values[0] <= best_first + tolerance]
    rest = signs[1:]
    return min(
        near, key=lambda t: ([s * v for s, v in zip(rest, t.values[1:], strict=True)], t.number)
    )


def objective_names(study: optuna.Study) -> list[str]:
    """What each objective value is called (the job's keys, else value, value_1...)."""
    stored = study.user_attrs.get(OBJECTIVE_ATTR)
    names = [stored] if isinstance(stored, str) else list(stored or [])
    n = len(study.directions)
    return names if len(names) == n else ["value"] + [f"value_{i}" for i in range(1, n)]


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
    path: Path, study: optuna.Study, is_group: Callable[[str], bool], tolerance: float = 0.0
) -> FrozenTrial | None:
    """Write the chosen trial's overrides as an experiment config (atomically); return it."""
    best = chosen_trial(study, tolerance)
    if best is None:
        log.warning("no COMPLETE trial in study %s yet: %s not written", study.study_name, path)
        return None
    overrides = best.user_attrs.get("overrides") or [
        f"{k}={format_value(v)}" for k, v in best.params.items()
    ]
    values = ", ".join(
        f"{k}={v:.6g}" for k, v in zip(objective_names(study), best.values, strict=True)
    )
    rule = "" if len(best.values) == 1 else f" (Pareto rule, tolerance {tolerance:g})"
    header = (
        f"Best of Optuna study {study.study_name!r}{rule}: trial {best.number}, {values}.\n"
        "Written by the imgclf_optuna sweeper; reproduce through the whole pipeline with\n"
        "  dvc exp run -S +experiment=best"
    )
    write_text(path, best_config_text(overrides, is_group, header))
    log.info("best trial %d written to %s", best.number, path)
    return best


def summary_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value(s), epochs run, peak RSS of its job, params."""
    rows = []
    names = objective_names(study)
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None] * len(names)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                **dict(zip(names, values, strict=True)),
                "epochs": t.user_attrs.get("epochs_run"),
                "rss_mb": t.user_attrs.get("rss_mb"),
                "params": _params(t),
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


def summary_text(study: optuna.Study, tolerance: float = 0.0) -> str:
    """The table of all the study's trials plus totals (epochs spent, the chosen trial)."""
    rows = summary_rows(study)
    done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    epochs = sum(int(r["epochs"] or 0) for r in rows)
    tail = (
        f"study {study.study_name!r}: {len(done)} done "
        f"({sum(r['state'] == 'PRUNED' for r in rows)} pruned), {len(rows)} in all, "
        f"{epochs} epochs spent"
    )
    best = chosen_trial(study, tolerance)
    if best is not None:
        values = ", ".join(
            f"{k}={v:.4f}" for k, v in zip(objective_names(study), best.values, strict=True)
        )
        tail += f"; best trial {best.number}: {values}"
        if len(best.values) > 1:
            tail += f" (of {len(study.best_trials)} on the Pareto front)"
    return f"{format_table(rows)}\n{tail}"


def log_search_space(
    parent: str, settings: StudySettings, space: Mapping[str, BaseDistribution], url: str
) -> None:
    """The search space and the study's settings as the parent run's params."""
    params: dict[str, Any] = {f"space.{k}": describe(d) for k, d in space.items()}
    params |= {
        "study.name": settings.study_name,
        "study.storage": redact(url),
        "study.direction": ",".join(settings.directions()),
        "study.objective": ",".join(settings.objectives() or ["(returned value)"]),
        "study.n_trials": settings.n_trials,
        "study.sampler": settings.sampler.name,
        "study.pruner": settings.pruner.name if settings.prunes() else "none",
    }
    try:
        tracking.log_to(parent, params=params)
    except Exception as exc:  # noqa: BLE001 - MLflow params are immutable: a changed relaunch
        log.warning("the parent run keeps its first search space (%s)", str(exc).splitlines()[0])


def parent_metrics(study: optuna.Study, tolerance: float) -> dict[str, float]:
    """The parent run's metrics: the chosen trial and its value(s), and trial counts."""
    trials = study.get_trials(deepcopy=False)
    metrics: dict[str, float] = {
        f"n_{state.lower()}": float(sum(t.state.name == state for t in trials))
        for state in ("COMPLETE", "PRUNED", "FAIL")
    }
    best = chosen_trial(study, tolerance)
    if best is not None:
        metrics["best_trial"] = float(best.number)
        for name, value in zip(objective_names(study), best.values, strict=True):
            metrics[f"best_{name}"] = float(value)
        if len(best.values) > 1:
            metrics["pareto_size"] = float(len(study.best_trials))
    return metrics


def pareto_text(study: optuna.Study) -> str:
    """The Pareto-optimal trials as a table."""
    names = objective_names(study)
    rows = [
        {"trial": t.number, **dict(zip(names, t.values, strict=True)), "params": _params(t)}
        for t in sorted(study.best_trials, key=lambda t: t.number)
    ]
    return format_table(rows)


def _params(t: FrozenTrial) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in t.params.items())


def log_study_report(study: optuna.Study, parent_run_id: str, tolerance: float = 0.0) -> None:
    """The parent run's metrics, Optuna's plots and the tables of trials (and Pareto front)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    tracking.log_to(parent_run_id, metrics=parent_metrics(study, tolerance))
    multi = len(study.directions) > 1
    plots: dict[str, Callable[[optuna.Study], Any]] = (
        {"pareto_front": lambda s: ovm.plot_pareto_front(s, target_names=objective_names(s))}
        if multi
        else {
            "optimization_history": ovm.plot_optimization_history,
            "param_importances": ovm.plot_param_importances,
            "intermediate_values": ovm.plot_intermediate_values,
        }
    )
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
        write_text(folder / "trials.txt", summary_text(study, tolerance) + "\n")
        if multi:
            write_text(folder / "pareto_front.txt", pareto_text(study) + "\n")
        tracking.log_artifacts_to(parent_run_id, folder, "optuna")
