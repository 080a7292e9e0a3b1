"""``make bench``'s accuracy by grouped cross-validation, and time-to-accuracy (scripts/bench.py).

Every labelled file (Training_data and Testing_Data pooled, ``cv.pool=all``) is predicted once
by a model that saw neither it nor any of its near-duplicates (:mod:`imgclf.cv`), for the
default recipe and the seed recipe, in one run on one host. Then the default's cosine schedule
is shortened (``train.epochs`` up the ``LADDER``) until its CV accuracy reaches the seed
recipe's: that run's training time over the seed recipe's is the time-to-accuracy ratio. Training
time is the CPU time of the folds' training processes (model build and fit, every thread): on a
shared 2-core host wall time also counts whatever else ran, CPU time much less so. Wall time is
reported beside it.

Nothing here chooses a recipe: the default was chosen on the validation split before; this only
measures it (which is why it may pool the test set).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

CV_OVERRIDES = ["cv=grouped5", "cv.pool=all"]
LADDER = (5, 10, 15, 20, 30, 40)  # train.epochs tried for time-to-accuracy, shortest first
START, END = "<!-- bench-cv:start -->", "<!-- bench-cv:end -->"


def cross_validate(
    clone: Path, label: str, overrides: list[str], repeats: int = 1
) -> dict[str, float]:
    """One recipe's ``cv_*`` summary (:func:`imgclf.cv.summarize`) plus its training time."""
    from imgclf.artifacts import PreprocessOutputs
    from imgclf.compose import compose_config
    from imgclf.sweeps.crossval import run_cv_job

    cfg = compose_config(clone / "conf", [*overrides, *CV_OVERRIDES, f"cv.repeats={repeats}"])
    started = time.perf_counter()
    result = run_cv_job(
        cfg,
        PreprocessOutputs.in_project(clone).root,
        parent_run_id=None,
        run_name=f"bench-cv-{label}",
        tags={"stage": "bench", "imgclf.overrides": " ".join(overrides)},
    )
    summary = dict(result.extra) | {"wall_seconds": time.perf_counter() - started}
    print(
        f"  {label}: cv_accuracy {summary['cv_accuracy']:.4f} "
        f"[{summary['cv_accuracy_ci95_low']:.4f}, {summary['cv_accuracy_ci95_high']:.4f}], "
        f"training {summary['cv_train_cpu_seconds']:.0f} CPU s "
        f"({summary['cv_train_seconds']:.0f} s)",
        flush=True,
    )
    return summary


def cv_rows(
    clone: Path, default: list[str], seed_recipe: list[str], repeats: int = 1
) -> dict[str, Any]:
    """Both recipes cross-validated, then the default's epochs to reach the seed's accuracy;
    every one ``repeats`` times over (the training seeds ``train.seed`` + 0, 1, ...)."""
    seed = cross_validate(clone, "seed", seed_recipe, repeats)
    full = cross_validate(clone, "default", default, repeats)
    ladder: list[dict[str, float]] = []
    for epochs in LADDER if full["cv_accuracy"] >= seed["cv_accuracy"] else ():
        overrides = [*default, f"train.epochs={epochs}"]
        short = cross_validate(clone, f"default-{epochs}ep", overrides, repeats)
        ladder.append({"epochs": epochs, **short})
        if short["cv_accuracy"] >= seed["cv_accuracy"]:
            break
    return {"default": full, "seed": seed, "ladder": ladder, "reached": reached(ladder, seed)}


def reached(ladder: list[dict[str, float]], seed: dict[str, float]) -> dict[str, float] | None:
    """The rung that reached the seed recipe's accuracy (the ladder stops there), or None."""
    return ladder[-1] if ladder and ladder[-1]["cv_accuracy"] >= seed["cv_accuracy"] else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _cell(s: dict[str, float], metric: str) -> str:
    return (
        f"{_pct(s[f'cv_{metric}'])} ± {100 * s[f'cv_{metric}_std']:.1f} "
        f"[{_pct(s[f'cv_{metric}_ci95_low'])}, {_pct(s[f'cv_{metric}_ci95_high'])}]"
    )


def render(r: dict[str, Any], classes: list[str]) -> str:
    """The generated CV block of BENCHMARKS.md."""
    d, s = r["default"], r["seed"]
    width = (d["cv_accuracy_ci95_high"] - d["cv_accuracy_ci95_low"]) / 2
    repeats = int(d.get("cv_repeats", 1))
    if repeats > 1:
        cells = (
            f"mean over {repeats} training seeds (`train.seed` and the next; `--cv-repeats`) of "
            "the fold means ± the folds' standard deviation [95 % bootstrap interval of the mean, "
            "resampling groups and seeds]"
        )
    else:
        cells = (
            "mean over folds ± their standard deviation [95 % group-bootstrap interval of the "
            "mean]; one training seed (`train.seed`), which the interval does not cover"
        )
    lines = [
        START,
        f"Measured {r['date']} on {r['machine']}, commit `{r['commit']}`, by `make bench`: "
        f"{int(d['cv_folds'])}-fold grouped cross-validation over all {int(d['cv_n'])} labelled "
        f"files (train and test pooled, near-duplicate groups kept whole). Cells: {cells}.",
        "",
        "| metric | default recipe | seed recipe (model=seed_cnn) | target |",
        "|---|---|---|---|",
        f"| accuracy | {_cell(d, 'accuracy')} | {_cell(s, 'accuracy')} | default ≥ 98.5 %, "
        f"interval within ±1.0 (measured ±{100 * width:.2f}); default ≥ seed + 3 points "
        f"(measured {100 * (d['cv_accuracy'] - s['cv_accuracy']):+.1f}) |",
        f"| macro F1 | {_cell(d, 'macro_f1')} | {_cell(s, 'macro_f1')} | |",
    ]
    if repeats > 1:
        lines.append(
            "| accuracy: standard deviation over the seeds | "
            f"{100 * d['cv_accuracy_seed_std']:.1f} points | "
            f"{100 * s['cv_accuracy_seed_std']:.1f} points | |"
        )
    for name in classes:
        for metric in ("recall", "f1"):
            key = f"{metric}_{name}"
            lines.append(f"| {name} {metric} | {_cell(d, key)} | {_cell(s, key)} | |")
    lines.append(
        f"| training time, all folds: CPU (wall) | {d['cv_train_cpu_seconds']:.0f} s "
        f"({d['cv_train_seconds']:.0f} s) | {s['cv_train_cpu_seconds']:.0f} s "
        f"({s['cv_train_seconds']:.0f} s) | |"
    )
    reached = r["reached"]
    if reached is not None:
        ratio = reached["cv_train_cpu_seconds"] / s["cv_train_cpu_seconds"]
        wall = reached["cv_train_seconds"] / s["cv_train_seconds"]
        lines.append(
            f"| time to the seed recipe's CV accuracy | {reached['epochs']} epochs: "
            f"{reached['cv_train_cpu_seconds']:.0f} CPU s ({_pct(reached['cv_accuracy'])}) | "
            f"{s['cv_train_cpu_seconds']:.0f} CPU s ({_pct(s['cv_accuracy'])}) | ≤ 0.5x: "
            f"measured {ratio:.2f}x ({wall:.2f}x in wall time) |"
        )
    else:
        lines.append(
            "| time to the seed recipe's CV accuracy | not reached with the epochs tried "
            f"| {s['cv_train_cpu_seconds']:.0f} CPU s | ≤ 0.5x |"
        )
    tried = ", ".join(
        f"{int(row['epochs'])} epochs {_pct(row['cv_accuracy'])} in "
        f"{row['cv_train_cpu_seconds']:.0f} CPU s"
        for row in r["ladder"]
    )
    tried = tried or "none (the full default is below the seed recipe)"
    lines += ["", f"Shortened cosine schedules tried, shortest first: {tried}.", END]
    return "\n".join(lines) + "\n"


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """``benchmarks.json``'s cross-validation figures (the keys tools read)."""
    d, s, reached = r["default"], r["seed"], r["reached"]
    ratio = reached["cv_train_cpu_seconds"] / s["cv_train_cpu_seconds"] if reached else None
    return {
        "cv_default_accuracy": d["cv_accuracy"],
        "cv_default_ci95_low": d["cv_accuracy_ci95_low"],
        "cv_default_ci95_high": d["cv_accuracy_ci95_high"],
        "cv_default_std": d["cv_accuracy_std"],
        "cv_default_macro_f1": d["cv_macro_f1"],
        "cv_seed_accuracy": s["cv_accuracy"],
        "cv_seed_ci95_low": s["cv_accuracy_ci95_low"],
        "cv_seed_ci95_high": s["cv_accuracy_ci95_high"],
        "cv_default_train_cpu_seconds": d["cv_train_cpu_seconds"],
        "cv_seed_train_cpu_seconds": s["cv_train_cpu_seconds"],
        "cv_default_train_wall_seconds": d["cv_train_seconds"],
        "cv_seed_train_wall_seconds": s["cv_train_seconds"],
        "time_to_seed_accuracy_epochs": reached["epochs"] if reached else None,
        "time_to_seed_accuracy_ratio": ratio,
        "cv_folds": int(d["cv_folds"]),
        "cv_repeats": int(d.get("cv_repeats", 1)),
        "cv_default_seed_std": d.get("cv_accuracy_seed_std"),
        "cv_n": int(d["cv_n"]),
        "host_cpu": r["host_cpu"],
        "machine": r["machine"],
        "commit": r["commit"],
        "date": r["date"],
        "cv": {"default": d, "seed": s, "ladder": r["ladder"]},
    }


def results(figures: dict[str, Any]) -> dict[str, Any]:
    """``benchmarks.json``'s CV figures back in the shape :func:`render` takes (the inverse of
    :func:`figures`): ``bench.py --only render`` redraws the block without training."""
    cv = figures["cv"]
    return {
        "default": cv["default"],
        "seed": cv["seed"],
        "ladder": cv["ladder"],
        "reached": reached(cv["ladder"], cv["seed"]),
        **{k: figures[k] for k in ("date", "machine", "commit", "host_cpu")},
    }


def classes_of(summary: dict[str, float]) -> list[str]:
    """The class names a ``cv_*`` summary scores, in order."""
    return sorted(k.removeprefix("cv_f1_") for k in summary if k.startswith("cv_f1_")
                  and not k.endswith(("_std", "_ci95_low", "_ci95_high")))  # fmt: skip


def write_json(path: Path, section: dict[str, Any]) -> None:
    """Merge ``section`` into ``path`` (the other bench parts' figures stay) atomically."""
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current | section, indent=2, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, path)
