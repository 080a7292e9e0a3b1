"""Sweeps: the ``imgclf-train`` Hydra app (:mod:`.app`), one job (:mod:`.job`), and the Optuna
loop (:mod:`.optimize`, :mod:`.study`, :mod:`.report`) behind the ``imgclf_optuna`` sweeper,
whose settings (:mod:`.settings`) the Hydra plugin registers.
"""
