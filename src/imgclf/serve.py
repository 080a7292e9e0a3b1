"""serve: a small HTTP server that classifies image files with one verified model.

Why our own server rather than ``mlflow models serve``: MLflow's scoring server takes JSON
tensors or data frames, so clients would have to decode, resize and serialise images
themselves, exactly the preprocessing the model was built to make unnecessary; and it loads
the model through MLflow, bypassing the sha256 check. This server takes the raw bytes of an
image file, decodes it with the same loader as ingest and predict (:mod:`imgclf.images`), and
loads the model through :func:`imgclf.predict.load_model` (any format, verified). It is the
standard library's threading HTTP server: no new dependency, one process, one model in memory.

Endpoints:
    ``GET /health``   -> ``{"status": "ok", "model": ..., "format": ..., "classes": [...]}``
    ``POST /predict`` -> body: the image file's bytes; answer: ``{"label", "probability",
    "probabilities"}``; 422 with a reason code for a file that is not a usable image.

It binds 127.0.0.1 unless told otherwise. When ``IMGCLF_SERVE_TOKEN`` is set, every request
must carry ``Authorization: Bearer <token>``; anything beyond loopback also wants TLS from a
reverse proxy in front (README).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.images import ImageRejected, load_resized
from imgclf.predict import LoadedModel, predict_arrays

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024
TOKEN_ENV = "IMGCLF_SERVE_TOKEN"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None


def classify_bytes(loaded: LoadedModel, data: bytes) -> dict[str, Any]:
    """Decode an uploaded image file with the project's loader and classify it.

    Raises:
        ImageRejected: the bytes are not a usable image (reason code in ``.reason``).
    """
    # The loader reads files (it is shared with ingest); a private temp file keeps it the
    # single decoding path rather than growing a second, bytes-only one.
    with tempfile.NamedTemporaryFile(prefix="imgclf-upload-") as f:
        f.write(data)
        f.flush()
        image = load_resized(Path(f.name), loaded.height, loaded.width, loaded.fit)
    (pred,) = predict_arrays(loaded, np.expand_dims(image, 0))
    return {
        "label": pred.label,
        "probability": pred.probability,
        "probabilities": pred.probabilities,
    }


def make_handler(loaded: LoadedModel, token: str | None) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one loaded model."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "imgclf"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            log.info("%s %s", self.address_string(), format % args)

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _authorised(self) -> bool:
            if token is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return False

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if not self._authorised():
                return
            if self.path == "/health":
                self._send(
                    HTTPStatus.OK,
                    {
                        "status": "ok",
                        "model": loaded.source,
                        "format": loaded.format,
                        "classes": loaded.classes,
                    },
                )
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "GET /health or POST /predict"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            if not self._authorised():
                return
            if self.path != "/predict":
                self._send(HTTPStatus.NOT_FOUND, {"error": "POST /predict"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0:
                self._send(
                    HTTPStatus.BAD_REQUEST,
                    {"error": "send the image file's bytes as the request body"},
                )
                return
            if length > MAX_BODY_BYTES:
                self._send(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    {"error": f"body over {MAX_BODY_BYTES} bytes"},
                )
                return
            data = self.rfile.read(length)
            try:
                answer = classify_bytes(loaded, data)
            except ImageRejected as exc:
                self._send(
                    HTTPStatus.UNPROCESSABLE_ENTITY, {"error": exc.reason, "detail": exc.detail}
                )
                return
            self._send(HTTPStatus.OK, answer)

    return Handler


def make_server(loaded: LoadedModel, cfg: ServeConfig) -> ThreadingHTTPServer:
    """Bind the server (not started: call ``serve_forever``)."""
    server = ThreadingHTTPServer((cfg.host, cfg.port), make_handler(loaded, cfg.token))
    server.daemon_threads = True
    return server


def serve(loaded: LoadedModel, cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    server = make_server(loaded, cfg)
    host, port = server.server_address[:2]
    log.info(
        "serving %s (%s) on http://%s:%s  (POST /predict, GET /health)%s",
        loaded.source,
        loaded.format,
        host,
        port,
        "" if cfg.token is None else f", bearer token from {TOKEN_ENV}",
    )
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "bound to %s: reachable beyond this machine; put auth and TLS in front", cfg.host
        )
    try:
        server.serve_forever()
    finally:
        server.server_close()


def token_from_env() -> str | None:
    """The bearer token the server requires, if ``IMGCLF_SERVE_TOKEN`` is set and non-empty."""
    return os.environ.get(TOKEN_ENV) or None
