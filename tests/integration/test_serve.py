"""``imgclf serve`` end to end: a real server process on a loopback port, a real ONNX model.

The model is a small colour classifier written as an export folder (tests/integration/
serve_models.py): it loads through the same sha256 verification as a real export, runs in
onnxruntime, and labels the tiny dataset right, so the answers can be asserted. The server runs
with short timeouts and small limits, so every refusal is reached in a second or two.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_CLASSES
from tests.integration.serve_models import IDENTITY, ROTATED, write_export

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = [
    "--header-timeout", "2", "--body-timeout", "2", "--max-body-mib", "1",
    "--max-pixels", "30000000", "--decode-memory-mib", "64",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running ``imgclf serve`` process."""

    def __init__(self, model: Path, cwd: Path, *extra: str) -> None:
        self.port = free_port()
        exe = str(Path(sys.executable).with_name("imgclf"))
        self.proc = subprocess.Popen(
            [exe, "serve", "--model", str(model), "--port", str(self.port), *extra],
            cwd=cwd,
            env={**os.environ, "IMGCLF_SERVE_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not start: {self.proc.stderr.read()[-3000:]}")

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict, dict]:
        """(status, JSON body or {"text": ...}, response headers), with the token by default."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=AUTH if headers is None else headers)
            resp = conn.getresponse()
            raw = resp.read()
            heads = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"text": raw.decode("utf-8", "replace")}
        return resp.status, data, heads

    def post_image(self, data: bytes, ctype: str = "application/octet-stream"):
        return self.call("POST", "/predict", data, {**AUTH, "Content-Type": ctype})

    def raw(self, payload: bytes, wait: float = 15, trickle: float = 0.0) -> tuple[bytes, float]:
        """Send bytes (one every ``trickle`` s if set); what came back, and when."""
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.settimeout(0.1)
            got, sent = b"", 0
            while time.monotonic() - start < wait:
                if sent < len(payload) and not got:
                    step = 1 if trickle else len(payload)
                    try:
                        s.sendall(payload[sent : sent + step])
                    except OSError:  # the server has answered and closed: read what it said
                        step = len(payload)
                    sent += step
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    break
                got += chunk or b""
                time.sleep(trickle)
        return got, time.monotonic() - start

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        return code, self.proc.stderr.read()


def multipart(*files: tuple[str, bytes]) -> tuple[bytes, str]:
    b = "testboundary42"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(work):
    served = Served(write_export(work / "model"), work, *LIMITS)
    yield served
    served.stop()


def class_image(data: Path, cls: str) -> bytes:
    return sorted((data / "Testing_Data" / cls).glob("*.png"))[0].read_bytes()


def test_http_server_classifies_an_image_of_each_class(server, work, tiny_dataset):
    status, health, _ = server.call("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["model"] == str(work / "model" / "model.onnx") and health["format"] == "onnx"
    assert health["classes"] == list(TINY_CLASSES)
    for cls in TINY_CLASSES:
        status, answer, _ = server.post_image(class_image(tiny_dataset, cls))
        assert status == 200 and answer["label"] == cls and answer["uncertain"] is None
        assert answer["probability"] == pytest.approx(answer["probabilities"][cls])
        assert answer["probability"] > 1 / 3
    status, err, _ = server.post_image(b"this is not an image")
    assert status == 422 and err["error"] == "not_an_image"


def test_multipart_upload_and_batch(server, tiny_dataset):
    alpha = class_image(tiny_dataset, "alpha")
    raw = server.post_image(alpha)[1]
    body, ctype = multipart(("scan.png", alpha))
    status, answer, _ = server.post_image(body, ctype)
    assert status == 200 and answer == raw  # curl -F file=@scan.png answers like the raw body
    files = [(f"{c}.png", class_image(tiny_dataset, c)) for c in TINY_CLASSES]
    body, ctype = multipart(*files, ("notes.txt", b"not an image"))
    status, out, _ = server.call("POST", "/predict/batch", body, {**AUTH, "Content-Type": ctype})
    assert status == 200
    results = out["results"]
    assert [r["name"] for r in results] == ["alpha.png", "beta.png", "gamma.png", "notes.txt"]
    assert [r.get("label") for r in results] == [*TINY_CLASSES, None]
    assert results[3]["error"] == "not_an_image"
    two, ctype = multipart(*files[:2])
    status, err, _ = server.post_image(two, ctype)  # /predict takes exactly one
    assert status == 400 and err["error"] == "bad_request"


def test_refusals_have_status_and_reason(server, tiny_dataset):
    alpha = class_image(tiny_dataset, "alpha")
    status, err, heads = server.call("POST", "/predict", alpha, {"Content-Type": "image/png"})
    assert (status, err["error"], heads["www-authenticate"]) == (401, "unauthorized", "Bearer")
    wrong = {"Authorization": "Bearer nope"}
    assert server.call("GET", "/health", headers=wrong)[0] == 401
    status, err, heads = server.call("GET", "/predict")
    assert (status, err["error"], heads["allow"]) == (405, "method_not_allowed", "POST")
    assert server.call("PUT", "/predict", alpha)[0] == 405
    assert server.call("DELETE", "/predict")[0] == 405
    assert server.call("GET", "/nothing")[1]["error"] == "not_found"
    status, err, _ = server.post_image(alpha, "text/plain")
    assert (status, err["error"]) == (415, "unsupported_media_type")
    status, err, _ = server.post_image(b"")
    assert (status, err["error"]) == (400, "bad_request")
    # Over the body limit: refused from Content-Length, before the body is read.
    got, took = server.raw(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        + b"\r\nContent-Type: image/png\r\nContent-Length: 5000000\r\n\r\n",
        wait=5,
    )  # fmt: skip
    assert got.startswith(b"HTTP/1.1 413 ") and b'"body_too_large"' in got and took < 2
    # Malformed requests: JSON 400 from the protocol layer.
    for payload in (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
    ):
        got, _ = server.raw(payload, wait=5)
        assert got.startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in got


def test_a_failing_model_call_answers_each_request_and_the_server_goes_on(work, tiny_dataset):
    served = Served(write_export(work / "failing", fails=True), work)
    try:
        alpha = class_image(tiny_dataset, "alpha")
        with ThreadPoolExecutor(6) as pool:  # concurrent: they share model calls
            results = list(pool.map(lambda _: served.post_image(alpha), range(6)))
        assert [(s, body["error"]) for s, body, _ in results] == [(500, "internal_error")] * 6
        assert served.call("GET", "/health")[0] == 200
        status, err, _ = served.post_image(b"not an image")  # refusals are still per request
        assert (status, err["error"]) == (422, "not_an_image")
    finally:
        code, log = served.stop()
    assert code == 0 and "POST /predict failed" in log


def test_image_limits_are_checked_before_decoding(server):
    # 8000x8000 declared by a header-only PNG: 413 without decoding a pixel.
    from tests.unit.test_images import _png_header_only

    status, err, _ = server.post_image(_png_header_only(8000, 8000), "image/png")
    assert status == 413 and err["error"] == "too_large" and "30000000" in err["detail"]
    # Under max_pixels, but more than the 64 MiB decode budget could ever hold: 413.
    rgb = np.zeros((3000, 3000, 3), np.uint8)
    status, err, _ = server.post_image(png(rgb), "image/png")
    assert status == 413 and err["error"] == "too_large" and "decoding" in err["detail"]
    # The same size in greyscale decodes on one channel, within the budget.
    status, answer, _ = server.post_image(png(rgb[..., 0]), "image/png")
    assert status == 200 and answer["probability"] == pytest.approx(1 / 3, abs=1e-3)


def test_small_or_unlike_images_are_uncertain(server, tiny_dataset):
    big = np.asarray(Image.open(io.BytesIO(class_image(tiny_dataset, "alpha"))))
    status, answer, _ = server.post_image(png(big[:8, :8].copy()))
    assert status == 200
    assert (answer["label"], answer["uncertain"]) == ("uncertain", "small_image")
    assert max(answer["probabilities"].values()) == answer["probability"]
    grey = np.full((40, 60, 3), 128, np.uint8)  # every class equally likely
    answer = server.post_image(png(grey))[1]
    assert (answer["label"], answer["uncertain"]) == ("uncertain", "low_confidence")


def test_slow_clients_get_408_and_block_no_one(server, tiny_dataset):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\n"
    with ThreadPoolExecutor(2) as pool:
        trickled = pool.submit(server.raw, head + b"Content-Type: image/png\r\n", 10, 0.5)
        short = pool.submit(
            server.raw,
            head + b"Authorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\nabc",
            10,
        )  # fmt: skip
        # Meanwhile 30 half-sent requests are held open, and a normal one is still answered.
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
        for s in held:
            s.sendall(head)
        start = time.monotonic()
        assert server.post_image(class_image(tiny_dataset, "beta"))[1]["label"] == "beta"
        assert time.monotonic() - start < 1.5
        (got_h, took_h), (got_b, took_b) = trickled.result(), short.result()
    assert got_h.startswith(b"HTTP/1.1 408 ") and b'"header_timeout"' in got_h
    assert got_b.startswith(b"HTTP/1.1 408 ") and b'"body_timeout"' in got_b
    assert 1.5 < took_h < 4 and 1.5 < took_b < 4  # the 2 s timeouts, not the client's 10 s
    time.sleep(1.5)
    for s in held:  # the held connections were answered 408 and closed too
        s.settimeout(1)
        assert s.recv(4096).startswith(b"HTTP/1.1 408 ")
        s.close()


def test_metrics_openapi_and_ready(server):
    status, ready, _ = server.call("GET", "/ready")
    assert status == 200 and ready["ready"] is True
    status, metrics, heads = server.call("GET", "/metrics")
    text = metrics["text"]
    assert status == 200 and heads["content-type"].startswith("text/plain; version=0.0.4")
    assert 'imgclf_requests_total{route="/predict",method="POST",status="200"}' in text
    assert 'imgclf_errors_total{reason="not_an_image"}' in text
    assert 'imgclf_request_duration_seconds_bucket{route="/predict",le="+Inf"}' in text
    assert 'imgclf_model_info{format="onnx",model="' in text
    assert "process_resident_memory_bytes" in text
    # The OpenAPI page is open (it holds no model or data), and documents the uploads.
    status, spec, _ = server.call("GET", "/openapi.json", headers={})
    assert status == 200
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/octet-stream", "image/*", "multipart/form-data"} <= set(content)
    assert "/predict/batch" in spec["paths"] and "/reload" in spec["paths"]
    status, page, _ = server.call("GET", "/docs", headers={})
    assert status == 200 and "swagger" in page["text"].lower()


def test_reload_swaps_the_model_without_dropping_requests(work, tiny_dataset):
    folder = write_export(work / "reloaded")
    served = Served(folder, work, *LIMITS)
    alpha = class_image(tiny_dataset, "alpha")
    try:
        assert served.post_image(alpha)[1]["label"] == "alpha"
        write_export(folder, ROTATED)  # a new model (and manifest) in place: it answers "beta"
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(served.post_image, alpha) for _ in range(40)]
            status, result, _ = served.call("POST", "/reload")
            statuses = [a.result()[0] for a in answers]
        assert status == 200 and result["reloaded"] is True
        assert statuses == [200] * 40  # none dropped across the swap
        assert served.post_image(alpha)[1]["label"] == "beta"
        # A changed file fails verification: 500 reload_failed, the loaded model keeps serving.
        (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"x")
        status, err, _ = served.call("POST", "/reload")
        assert status == 500 and err["error"] == "reload_failed" and "sha256" in err["detail"]
        assert served.post_image(alpha)[1]["label"] == "beta"
        write_export(folder, IDENTITY)  # SIGHUP reloads too
        os.killpg(served.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while served.post_image(alpha)[1]["label"] != "alpha":
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.2)
        metrics = served.call("GET", "/metrics")[1]["text"]
        assert 'imgclf_model_reloads_total{result="failed"} 1' in metrics
        assert 'imgclf_model_reloads_total{result="reloaded"} 2' in metrics
    finally:
        served.stop()


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(work, tiny_dataset):
    served = Served(write_export(work / "stopping"), work, "--body-timeout", "20")
    image = class_image(tiny_dataset, "gamma")
    conn = socket.create_connection(("127.0.0.1", served.port))
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(image)}\r\n\r\n"
    ).encode()
    conn.sendall(head + image[:100])  # a request in flight: half its body sent
    time.sleep(0.5)
    os.killpg(served.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert served.proc.poll() is None  # waiting for the request in flight
    conn.sendall(image[100:])
    conn.settimeout(10)
    reply = b""
    while chunk := conn.recv(65536):
        reply += chunk
    conn.close()
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"label":"gamma"' in reply
    code, log = served.stop()
    assert code == 0, log
    assert "ERROR" not in log and "Traceback" not in log
    assert "stopped (SIGTERM)" in log
