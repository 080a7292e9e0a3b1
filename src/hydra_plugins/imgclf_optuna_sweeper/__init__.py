"""Hydra sweeper plugin ``hydra/sweeper=imgclf_optuna``: Optuna 5 for any Hydra app and launcher.

Found by Hydra's plugin discovery (the ``hydra_plugins`` namespace package, which therefore has
no ``__init__.py``). Hydra imports the plugin at every start, so it stays light: Optuna, Keras
and MLflow load only when a sweep runs. The work happens in :mod:`imgclf.sweeps`.
"""
