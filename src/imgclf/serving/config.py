"""The server's settings: where it listens and the limits that bound its time and memory.

These are runtime settings of ``imgclf serve`` (its flags), like its port: nothing here changes
what a model answers, so they are not pipeline parameters in ``conf/``. docs/serving.md explains
each limit and the memory ceiling they add up to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TOKEN_ENV = "IMGCLF_SERVE_TOKEN"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None  # every request but /docs needs "Authorization: Bearer <token>"
    # Time: a client that has not sent its request line and headers within header_timeout_s,
    # or its whole body within body_timeout_s of the headers, gets 408 and is disconnected.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    busy_timeout_s: float = 10.0  # longest wait for memory budget before 503 busy
    graceful_timeout_s: int = 30  # SIGTERM: in-flight requests get this long to finish
    # Size: bodies over max_body_bytes get 413 from the Content-Length, before any is read.
    max_body_bytes: int = 25 * MIB
    max_header_bytes: int = 16 * 1024
    max_batch_files: int = 32
    # per image, from its header (413 too_large); None: imgclf.images.DEFAULT_MAX_PIXELS
    max_pixels: int | None = None
    max_connections: int = 256  # beyond: 503 without reading the request
    # Memory: request bodies held and images being decoded each draw from a budget; a request
    # waits (up to busy_timeout_s) for its share. Ceiling ~ process baseline + both budgets.
    body_memory_bytes: int = 128 * MIB
    decode_memory_bytes: int = 384 * MIB
    # images decoded at once (threads: Pillow and OpenCV release the GIL)
    decode_workers: int = field(default_factory=lambda: default_decode_workers())
    max_batch: int = 32  # images per call of the model (requests waiting together are batched)
    # Promotion: poll the registry alias every poll_s seconds (0: only SIGHUP or POST /reload).
    poll_s: float = 0.0
    # The low-confidence rule (imgclf.answers.ConfidenceRule).
    min_probability: float | None = None  # None: ConfidenceRule's default for the model
    min_side: int | None = None


def token_from_env() -> str | None:
    """The bearer token the server requires, if ``IMGCLF_SERVE_TOKEN`` is set and non-empty."""
    return os.environ.get(TOKEN_ENV) or None


def default_decode_workers() -> int:
    """One decoding thread per core, at most 4 (each holds up to a whole image in memory)."""
    return max(1, min(4, os.cpu_count() or 1))
