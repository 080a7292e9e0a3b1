"""uvicorn around the app: header timeout, h11 limits, signals and a graceful stop.

uvicorn's own settings cover the idle keep-alive timeout, the header size (h11's limit on an
incomplete event), the connection limit and the graceful-shutdown timeout. It has no timeout for
a request's *headers*: a client trickling them a byte a second would hold its connection for
ever. :class:`TimedH11Protocol` adds one (408 and close), and answers malformed requests with a
JSON 400 rather than uvicorn's plain text.

Signals: SIGTERM and SIGINT stop accepting connections, let in-flight requests finish (up to
``graceful_timeout_s``) and return normally, with an INFO log line and exit status 0; SIGHUP
reloads the model (promotion without a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgclf.serving import errors
from imgclf.serving.app import Service, create_app, reload_model
from imgclf.serving.config import TOKEN_ENV

log = logging.getLogger(__name__)


class TimedH11Protocol(H11Protocol):
    """h11 protocol with a deadline for the request line and headers (``header_timeout``)."""

    header_timeout = 10.0  # set per server by :func:`protocol_class`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()  # a client that connects and sends nothing is timed out too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still waiting for a request's headers with some of them buffered: keep the deadline;
        # a request under way (or none begun, idle on keep-alive) has its own timers.
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        detail = f"the request line and headers did not arrive within {self.header_timeout:g} s"
        self.logger.info("%s: 408 %s", _peer(self.client), detail)
        self.transport.write(
            errors.raw_response(408, "Request Timeout", errors.HEADER_TIMEOUT, detail)
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            super().send_400_response(msg)  # mid-response: keep uvicorn's handling
            return
        detail = "malformed HTTP request (request line, a header or Content-Length)"
        self.transport.write(errors.raw_response(400, "Bad Request", errors.BAD_REQUEST, detail))
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


def protocol_class(header_timeout: float) -> type[TimedH11Protocol]:
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})


class Server(uvicorn.Server):
    """uvicorn's server with imgclf's signals (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self.stopped_by: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the signal after shutdown, which would turn a clean
        # stop into the CLI's "terminated" error; this one just returns.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._loop = asyncio.get_running_loop()
        handlers: dict[int, Callable[[int, Any], None]] = {
            signal.SIGTERM: self._stop,
            signal.SIGINT: self._stop,
        }
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = self._hup
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, sig: int, _frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for in-flight requests
        self.should_exit = True
        self.service.shutting_down = True
        self.stopped_by = signal.Signals(sig).name

    def _hup(self, _sig: int, _frame: Any) -> None:
        self._loop.call_soon_threadsafe(self._reload)

    def _reload(self) -> None:
        task = asyncio.ensure_future(reload_model(self.service, "SIGHUP"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged in reload


def make_server(service: Service) -> Server:
    cfg = service.cfg
    config = uvicorn.Config(
        create_app(service),
        host=cfg.host,
        port=cfg.port,
        http=protocol_class(cfg.header_timeout_s),
        lifespan="on",
        log_config=None,  # the CLI's logging setup
        access_log=False,  # /metrics counts every request; a line each would cost more
        server_header=False,
        timeout_keep_alive=cfg.keep_alive_s,
        timeout_graceful_shutdown=cfg.graceful_timeout_s,
        limit_concurrency=cfg.max_connections,
        h11_max_incomplete_event_size=cfg.max_header_bytes,
    )
    return Server(config, service)


def serve(service: Service) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a graceful stop."""
    cfg = service.cfg
    server = make_server(service)
    log.info(
        "serving %s (%s) on http://%s:%s (POST /predict, /predict/batch; GET /health, /ready, "
        "/metrics, /docs)%s",
        service.holder.current.source,
        service.holder.current.format,
        cfg.host,
        cfg.port,
        "" if cfg.token is None else f"; bearer token from {TOKEN_ENV}",
    )
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("bound to %s: reachable beyond this machine; put TLS in front", cfg.host)
    server.run()
    if not server.started:
        return 1  # uvicorn logged why (the port in use, say)
    log.info("stopped (%s): in-flight requests finished", server.stopped_by or "exit")
    return 0
