"""The ASGI middleware in front of every request: auth, body limits and timeouts, metrics.

It runs before routing, so a refused request costs no handler, no thread and no body read:

- 401 when ``IMGCLF_SERVE_TOKEN`` is set and the bearer token is missing or wrong (compared in
  constant time); the OpenAPI page and schema stay open (they hold no model or data);
- 413 from the Content-Length header alone, before reading the body;
- the body's bytes are reserved from the body budget before it is read (503 ``busy`` when the
  budget stays full), and the body must arrive within ``body_timeout_s`` (408) and within
  ``max_body_bytes`` (413, for chunked bodies that declared no length);
- an error answered before the body was read closes the connection (the rest of a slow or huge
  body is never waited for).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from imgclf.serving import errors
from imgclf.serving.budget import Busy, ByteBudget, OverBudget
from imgclf.serving.config import ServeConfig
from imgclf.serving.errors import ApiError
from imgclf.serving.metrics import Metrics

OPEN_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Scope = dict[str, Any]


class Guard:
    """Pure ASGI middleware (no per-request Request object: it is on every request's path)."""

    def __init__(self, app: Any, cfg: ServeConfig, body_budget: ByteBudget, metrics: Metrics):
        self.app = app
        self.cfg = cfg
        self.body_budget = body_budget
        self.metrics = metrics
        self._expected = f"Bearer {cfg.token}".encode() if cfg.token else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "body_done": scope["method"] not in BODY_METHODS}
        scope.setdefault("state", {})

        async def send_tracked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if message["status"] >= 400 and not state["body_done"]:
                    # Answered before the whole body came: do not wait for the rest of it.
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self._guarded(scope, receive, send_tracked, state)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe(
                scope["method"],
                scope["path"],
                state["status"],
                time.perf_counter() - started,
                scope["state"].get("error_reason"),
            )

    async def _guarded(self, scope: Scope, receive: Any, send: Any, state: dict) -> None:
        headers = dict(scope["headers"])  # lower-cased names (ASGI)
        if self._expected is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await reply(
                    scope,
                    send,
                    ApiError(
                        401,
                        errors.UNAUTHORIZED,
                        "missing or wrong bearer token (Authorization: Bearer <token>)",
                        {"www-authenticate": "Bearer"},
                    ),
                )
                return
        if state["body_done"]:
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        limit = self.cfg.max_body_bytes
        # h11 has already refused a Content-Length that is not a number (400).
        declared = int(length) if length is not None else None
        if declared is not None and declared > limit:
            await reply(
                scope,
                send,
                ApiError(413, errors.BODY_TOO_LARGE, f"body of {declared} bytes; limit {limit}"),
            )
            return
        reserve = declared if declared is not None else limit
        try:
            await self.body_budget.acquire(reserve, self.cfg.busy_timeout_s)
        except Busy as exc:
            await reply(scope, send, ApiError(503, errors.BUSY, f"{exc}; retry", RETRY))
            return
        except OverBudget as exc:  # only when max_body_bytes > body_memory_bytes
            await reply(scope, send, ApiError(413, errors.BODY_TOO_LARGE, str(exc)))
            return
        try:
            await self.app(scope, self._receiver(receive, state), send)
        finally:
            await self.body_budget.release(reserve)

    def _receiver(self, receive: Any, state: dict) -> Any:
        """``receive`` with the body's deadline and size limit (raising ApiError 408/413)."""
        deadline = asyncio.get_running_loop().time() + self.cfg.body_timeout_s
        limit = self.cfg.max_body_bytes
        seen = 0

        async def guarded_receive() -> dict[str, Any]:
            nonlocal seen
            if state["body_done"]:
                return await receive()  # after the body: only a disconnect is left to wait for
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408,
                    errors.BODY_TIMEOUT,
                    f"the body did not arrive within {self.cfg.body_timeout_s:g} s",
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, errors.BODY_TOO_LARGE, f"body over {limit} bytes")
                state["body_done"] = not message.get("more_body", False)
            return message

        return guarded_receive


CLOSE = (b"connection", b"close")
RETRY = {"retry-after": "1"}


async def reply(scope: Scope, send: Any, exc: ApiError) -> None:
    """Send ``exc`` as the JSON error response."""
    scope.setdefault("state", {})["error_reason"] = exc.reason
    payload = errors.body(exc.reason, exc.detail)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode(), v.encode()) for k, v in exc.headers.items()),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
