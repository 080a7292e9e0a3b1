"""A tiny pure-Python Hydra app the sweeper tests optimise: no TensorFlow, a trial in tenths of a s.

It returns ``(x - 2)^2 + (y + 1)^2`` as a float, a list or a dict (``returns``), reports
``steps`` intermediate values through :func:`imgclf.sweeps.trial.current_trial` (so the pruner
can stop it), can sleep (parallel workers overlap) and can kill itself with SIGSEGV when
``x == crash_on`` (a native crash) or raise when ``x == raise_on``.
"""

from __future__ import annotations

import os
import signal
import time

import hydra
import optuna
from omegaconf import DictConfig

from imgclf.sweeps.trial import current_trial


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> object:
    x, y = float(cfg.x), float(cfg.y)
    loss = (x - 2) ** 2 + (y + 1) ** 2
    size = abs(x) + abs(y)
    trial = current_trial()
    if trial is not None:
        trial.set_user_attr("pid", os.getpid())  # through the storage, from the job's process
        for step in range(cfg.steps):
            trial.report(loss + cfg.steps - step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
    time.sleep(cfg.sleep)
    if cfg.crash_on is not None and x == cfg.crash_on:
        os.kill(os.getpid(), signal.SIGSEGV)
    if cfg.raise_on is not None and x == cfg.raise_on:
        raise RuntimeError(f"no good at x={x}")
    if cfg.returns == "list":
        return [loss, size]
    if cfg.returns == "dict":
        return {"loss": loss, "size": size}
    return loss


if __name__ == "__main__":
    main()
