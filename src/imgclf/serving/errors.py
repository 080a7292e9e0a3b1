"""JSON errors: every refusal is ``{"error": <reason code>, "detail": <what to do>}``.

Reason codes are stable strings (clients and the ``imgclf_errors_total`` metric key on them);
the image ones come from :mod:`imgclf.images`.
"""

from __future__ import annotations

import json
from typing import Any

from imgclf import images

BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
BODY_TOO_LARGE = "body_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
BUSY = "busy"
NOT_READY = "not_ready"
RELOAD_FAILED = "reload_failed"
INTERNAL = "internal_error"

# An image refused by imgclf.images: 413 when it is too large to decode here, else 422.
IMAGE_STATUS = {images.TOO_LARGE: 413}


class ApiError(Exception):
    """A request the server refuses: HTTP status, reason code and a one-line detail."""

    def __init__(
        self, status: int, reason: str, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}


def body(reason: str, detail: str = "", **extra: Any) -> bytes:
    return json.dumps({"error": reason, "detail": detail, **extra}).encode()


def raw_response(status: int, phrase: str, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 error response, for the protocol layer (no request was parsed yet)."""
    payload = body(reason, detail)
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + payload
