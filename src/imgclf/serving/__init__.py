"""``imgclf serve``: classify uploaded images over HTTP with one verified model (docs/serving.md).

Why our own server rather than ``mlflow models serve``: MLflow's scoring server takes JSON
tensors or data frames, so clients would have to decode, resize and serialise images themselves,
exactly the preprocessing the model was built to make unnecessary; and it loads the model through
MLflow, bypassing the sha256 check. This one takes image files, prepares them with the loader
training used (:mod:`imgclf.images`) and loads models through :func:`imgclf.predict.load_model`.

Modules: :mod:`.config` (settings and limits), :mod:`.server` (uvicorn, header timeout, signals),
:mod:`.guard` (auth, body limits and timeouts), :mod:`.app` (routes and the per-image pipeline),
:mod:`.budget` (memory budgets), :mod:`.holder` (the model, reload, batching), :mod:`.metrics`,
:mod:`.errors`, :mod:`.openapi`. Import from the modules: this package imports nothing, so
``imgclf``'s argument parser (which reads :class:`.config.ServeConfig`'s defaults) stays light.
"""
