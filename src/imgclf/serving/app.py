"""The ASGI application: routes, the per-image pipeline and JSON errors (FastAPI).

Per image: read the header (:func:`imgclf.predict.probe_for`: format, size, pixel limit), reserve
its decoding peak from the decode budget and one of ``decode_workers`` slots, decode and resize
in a thread with the loader training used, then predict in the shared :class:`Batcher` and
apply the :class:`~imgclf.answers.ConfidenceRule`. The event loop never decodes or predicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from imgclf.answers import ConfidenceRule, Prediction
from imgclf.images import DEFAULT_MAX_PIXELS, ImageRejected
from imgclf.predict import LoadedModel, prepare, probe_for, to_predictions
from imgclf.serving import errors, openapi
from imgclf.serving.budget import Busy, ByteBudget, OverBudget
from imgclf.serving.config import ServeConfig
from imgclf.serving.errors import ApiError
from imgclf.serving.guard import Guard
from imgclf.serving.holder import Batcher, ModelHolder
from imgclf.serving.metrics import Metrics

log = logging.getLogger(__name__)

RAW_TYPES = ("application/octet-stream", "image/")
MULTIPART = "multipart/form-data"


class Service:
    """Everything a request needs, made once per server."""

    def __init__(self, holder: ModelHolder, cfg: ServeConfig) -> None:
        self.holder = holder
        self.cfg = cfg
        self.metrics = Metrics()
        self.body_budget = ByteBudget(cfg.body_memory_bytes, "request body")
        self.decode_budget = ByteBudget(cfg.decode_memory_bytes, "decoding")
        self.decode_slots: asyncio.Semaphore | None = None
        # Our own threads rather than anyio's, whose hop costs more CPU in the event loop.
        # Twice the decode slots, so reading a header never waits behind decodes.
        self.pool: ThreadPoolExecutor | None = None
        self.batcher = Batcher(cfg.max_batch)
        self.rule = ConfidenceRule(cfg.min_probability, cfg.min_side)
        self.shutting_down = False
        self.max_pixels = cfg.max_pixels or DEFAULT_MAX_PIXELS

    async def classify(self, data: bytes, source: str) -> dict[str, Any]:
        """One image file's bytes -> the answer (raises ApiError)."""
        loaded = self.holder.current  # this request's model, even if a reload swaps it
        loop = asyncio.get_running_loop()
        try:
            assert self.decode_slots is not None and self.pool is not None
            probe = await loop.run_in_executor(
                self.pool, probe_for, loaded, data, source, self.max_pixels
            )
            async with self.decode_slots:
                await self.decode_budget.acquire(probe.peak_bytes, self.cfg.busy_timeout_s)
                try:
                    x = await loop.run_in_executor(self.pool, prepare, loaded, probe)
                finally:
                    await self.decode_budget.release(probe.peak_bytes)
        except ImageRejected as exc:
            self.metrics.images[exc.reason] += 1
            raise ApiError(
                errors.IMAGE_STATUS.get(exc.reason, 422), exc.reason, exc.detail
            ) from None
        except OverBudget as exc:
            self.metrics.images["too_large"] += 1
            raise ApiError(413, "too_large", f"{source}: decoding {exc}") from None
        except Busy as exc:
            raise ApiError(503, errors.BUSY, f"{exc}; retry", {"retry-after": "1"}) from None
        probs = await self.batcher.predict(loaded, x)
        (pred,) = to_predictions(loaded.classes, probs[None])
        side = min(probe.width, probe.height)
        pred = self.rule.judge(pred, side, (loaded.height, loaded.width))
        self.metrics.images[pred.uncertain or "labelled"] += 1
        return answer(pred, loaded)


def answer(pred: Prediction, loaded: LoadedModel) -> dict[str, Any]:
    # Field by field: dataclasses.asdict deep-copies, a measurable share of a request's CPU.
    return {
        "label": pred.label,
        "probability": pred.probability,
        "probabilities": pred.probabilities,
        "uncertain": pred.uncertain,
        "model": loaded.source,
    }


def create_app(service: Service) -> Any:
    """The ASGI app (FastAPI behind the :class:`Guard` middleware)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        workers = service.cfg.decode_workers
        service.decode_slots = asyncio.Semaphore(workers)
        service.pool = ThreadPoolExecutor(2 * workers, thread_name_prefix="imgclf-image")
        service.batcher.start()
        poller = None
        if service.cfg.poll_s > 0:
            poller = asyncio.get_running_loop().create_task(poll(service))
        try:
            yield
        finally:
            service.shutting_down = True
            if poller is not None:
                poller.cancel()
            await service.batcher.stop()
            service.pool.shutdown(wait=False)  # idle by now: requests have finished

    app = FastAPI(
        title="imgclf",
        summary="Classify ID-card images with the verified @champion model",
        description=openapi.DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
    )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.post("/predict", **openapi.PREDICT)
    async def predict(request: Request) -> JSONResponse:
        files = await uploads(request, service.cfg, one=True)
        name, data = files[0]
        return JSONResponse(await service.classify(data, name))

    @app.post("/predict/batch", **openapi.BATCH)
    async def predict_batch(request: Request) -> JSONResponse:
        files = await uploads(request, service.cfg, one=False)

        async def one(name: str, data: bytes) -> dict[str, Any]:
            try:
                return {"name": name, **await service.classify(data, name)}
            except ApiError as exc:
                return {"name": name, "error": exc.reason, "detail": exc.detail}

        return JSONResponse({"results": await asyncio.gather(*(one(n, d) for n, d in files))})

    @app.get("/health", **openapi.HEALTH)
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", **service.holder.describe()})

    @app.get("/ready", **openapi.READY)
    async def ready() -> JSONResponse:
        if service.shutting_down:
            raise ApiError(503, errors.NOT_READY, "shutting down")
        return JSONResponse({"ready": True, "model": service.holder.current.source})

    @app.get("/metrics", **openapi.METRICS)
    async def metrics() -> PlainTextResponse:
        holder = service.holder.describe()
        model = {k: str(holder[k] or "") for k in ("model", "version", "format")}
        gauges = {
            "imgclf_model_loaded_timestamp_seconds": service.holder.loaded_at,
            "imgclf_body_budget_used_bytes": service.body_budget.used,
            "imgclf_body_budget_peak_bytes": service.body_budget.peak,
            "imgclf_decode_budget_used_bytes": service.decode_budget.used,
            "imgclf_decode_budget_peak_bytes": service.decode_budget.peak,
            "imgclf_model_calls_total": service.batcher.calls,
            "imgclf_model_images_total": service.batcher.images,
        }
        return PlainTextResponse(
            service.metrics.render(model, gauges),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    @app.post("/reload", **openapi.RELOAD)
    async def reload() -> JSONResponse:
        return JSONResponse(await reload_model(service, "POST /reload"))

    async def route(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # POST /predict, the route under load, skips FastAPI's stack of middleware and routing
        # (a third of the event loop's CPU per request, profiled); every other request takes it.
        # Its FastAPI route stays, for the OpenAPI page and the 405 of other methods.
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            await app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await predict(request)
        except ApiError as exc:
            response = await _api_error(request, exc)
        except Exception:
            log.exception("POST /predict failed")
            response = _json_error(request, 500, errors.INTERNAL, "see the server's log")
        await response(scope, receive, send)

    return Guard(route, service.cfg, service.body_budget, service.metrics)


async def reload_model(service: Service, why: str, only_if_moved: bool = False) -> dict[str, Any]:
    """Reload through the holder, counting the outcome (raises ApiError 500 on failure)."""
    try:
        result = await service.holder.reload(why, only_if_moved)
    except Exception as exc:  # noqa: BLE001 - any load failure keeps the old model serving
        service.metrics.reloads["failed"] += 1
        log.warning(
            "reload (%s) failed, still serving %s: %s", why, service.holder.current.source, exc
        )
        raise ApiError(
            500, errors.RELOAD_FAILED, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ) from exc
    service.metrics.reloads["reloaded" if result["reloaded"] else "unchanged"] += 1
    return result


async def poll(service: Service) -> None:
    """Reload whenever the registry alias moves (every ``poll_s`` seconds)."""
    while True:
        await asyncio.sleep(service.cfg.poll_s)
        with contextlib.suppress(ApiError):
            await reload_model(service, "alias moved", only_if_moved=True)


async def uploads(request: Request, cfg: ServeConfig, one: bool) -> list[tuple[str, bytes]]:
    """The image files of a request: a raw body, or the file parts of a multipart form."""
    ctype = request.headers.get("content-type", "application/octet-stream").lower()
    if ctype.startswith(MULTIPART):
        form = await request.form(max_files=cfg.max_batch_files, max_fields=cfg.max_batch_files)
        files = []
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or "upload", await value.read()))
                await value.close()
        await form.close()
    elif ctype.startswith(RAW_TYPES):
        if not one:
            raise ApiError(415, errors.UNSUPPORTED_MEDIA_TYPE, "send a multipart/form-data batch")
        files = [("upload", await request.body())]
    else:
        raise ApiError(
            415,
            errors.UNSUPPORTED_MEDIA_TYPE,
            f"{ctype.split(';')[0]}: send the file's bytes as application/octet-stream or "
            "image/*, or a multipart/form-data upload (curl -F file=@scan.jpg)",
        )
    if not files or (len(files) > 1 and one):
        what = "one image file" if one else f"1 to {cfg.max_batch_files} image files"
        raise ApiError(400, errors.BAD_REQUEST, f"send {what}; got {len(files)}")
    if len(files) == 1 and not files[0][1] and not ctype.startswith(MULTIPART):
        raise ApiError(400, errors.BAD_REQUEST, "empty body: send the image file's bytes")
    return files


def _json_error(request: Request, status: int, reason: str, detail: str, headers=None):
    request.state.error_reason = reason
    return JSONResponse({"error": reason, "detail": detail}, status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json_error(request, exc.status, exc.reason, exc.detail, exc.headers or None)


HTTP_REASONS = {400: errors.BAD_REQUEST, 404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    reason = HTTP_REASONS.get(exc.status_code, f"http_{exc.status_code}")
    detail = str(exc.detail)
    if exc.status_code == 404:
        detail = f"{request.url.path}: no such endpoint (see /docs)"
    return _json_error(request, exc.status_code, reason, detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return _json_error(request, 422, errors.BAD_REQUEST, str(exc))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgclf")
    except PackageNotFoundError:
        return "0"
