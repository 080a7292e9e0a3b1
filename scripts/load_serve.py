"""Load and abuse test of ``imgclf serve`` on 127.0.0.1: throughput, latency, bad clients, memory.

Starts the server itself (``--src`` picks the source tree, so an older checkout can be measured
with the same model), runs bounded request loops and stops it. Every phase ends by itself.

    python scripts/load_serve.py --model artifacts/export --image scan.jpg --label after
    git worktree add /tmp/serve-before 2f07eb4
    python scripts/load_serve.py --src /tmp/serve-before/src --label before ...

Phases (each on a fresh server, so peak memory is the phase's own):
  load   N concurrent clients (1, 8, 32), a new connection per request as urllib makes (or
         one per client, --keep-alive): requests/s, p50/p95/p99 latency, and the server's
         CPU time per request (from /proc: what other jobs on the machine cannot inflate)
  abuse  a header sent at 1 byte/s, a body shorter than its Content-Length, Content-Length
         "abc", TLS-like bytes, PUT, GET /predict, a multipart upload, 50 half-sent requests
         held open (and a normal request timed meanwhile: is any worker blocked?)
  burst  8 concurrent 7000x8000 greyscale PNGs: statuses, time, server peak RSS (VmHWM)
Prints a markdown table and writes the numbers as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``imgclf serve`` in a subprocess, from the source tree ``src``."""

    def __init__(self, src: Path, model: str, extra: list[str]) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("IMGCLF_SERVE_TOKEN", None)
        code = "import sys; from imgclf.cli import main; sys.exit(main())"
        argv = ["serve", "--model", model, "--format", "onnx", "--port", str(self.port), *extra]
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"load_serve_{self.port}.log"
        self.log = log.open("w")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv], env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {self.log.name}")
            try:
                if request(self.port, "GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not answer /health within 120 s")

    def status(self) -> dict[str, int]:
        """VmHWM (peak RSS), VmRSS (kB) and thread count, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
        return fields

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    ctype: str | None = None,
    timeout: float = 60,
) -> tuple[int, bytes, float]:
    """One request on a new connection: (status, body, seconds); status 0 = no answer."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, time.perf_counter() - start
    except (OSError, http.client.HTTPException):
        return 0, b"", time.perf_counter() - start
    finally:
        conn.close()


def load(server: Server, image: bytes, clients: int, total: int, keep_alive: bool) -> dict:
    """``total`` POST /predict requests over ``clients`` threads; with ``keep_alive`` each
    thread keeps one connection open (the server may still close it after each answer)."""
    per = [total // clients + (i < total % clients) for i in range(clients)]
    headers = {"Content-Type": "application/octet-stream"}

    def worker(n: int) -> list[tuple[int, float]]:
        if not keep_alive:
            return [
                request(server.port, "POST", "/predict", image, headers["Content-Type"])[::2]
                for _ in range(n)
            ]
        conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
        out = []
        for _ in range(n):
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=image, headers=headers)
                resp = conn.getresponse()
                resp.read()
                out.append((resp.status, time.perf_counter() - start))
            except (OSError, http.client.HTTPException):
                conn.close()
                out.append((0, time.perf_counter() - start))
        conn.close()
        return out

    cpu0 = server.cpu_seconds()
    client0 = client_cpu_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(worker, per) for r in rs]
    wall = time.perf_counter() - start
    lat = sorted(t for _, t in results)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "clients": clients,
        "keep_alive": keep_alive,
        "requests": total,
        "ok": sum(s == 200 for s, _ in results),
        "rps": total / wall,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "p99_ms": q[98] * 1000,
        "server_cpu_ms_per_request": (server.cpu_seconds() - cpu0) / total * 1000,
        "client_cpu_ms_per_request": (client_cpu_seconds() - client0) / total * 1000,
    }


def client_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator; the server is a child)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw(port: int, payload: bytes, wait: float, trickle: float = 0.0) -> tuple[str, float]:
    """Send ``payload`` (a byte every ``trickle`` s if set) and wait up to ``wait`` s for an
    answer: ("<status>", seconds), ("closed", s) without a response, ("none", wait)."""
    start = time.monotonic()
    s = socket.create_connection((HOST, port))
    s.settimeout(0.2)
    got = b""
    sent = 0
    try:
        while time.monotonic() - start < wait:
            if sent < len(payload):
                step = 1 if trickle else len(payload)
                try:
                    s.sendall(payload[sent : sent + step])
                except OSError:
                    break
                sent += step
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                chunk = None
            except OSError:
                break
            if chunk == b"":
                break
            if chunk:
                got += chunk
                if b"\r\n" in got:
                    break
            if trickle:
                time.sleep(trickle)
    finally:
        s.close()
    took = time.monotonic() - start
    if got.startswith(b"HTTP/"):
        return got.split(b" ", 2)[1].decode(), took
    return ("closed" if took < wait else "none"), took


def multipart(image: bytes) -> tuple[bytes, str]:
    b = "imgclfboundary"
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="scan.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def abuse(server: Server, image: bytes) -> dict:
    port = server.port
    head = f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\n".encode()
    out: dict[str, dict] = {}
    cases = {
        "header at 1 byte/s": (head + b"Content-Type: image/jpeg\r\n", 45, 1.0),
        "body short of Content-Length": (
            head + b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n" + image[:1000],
            45,
            0.0,
        ),
        "Content-Length: abc": (head + b"Content-Length: abc\r\n\r\nxyz", 10, 0.0),
        "TLS-like bytes": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), 10, 0.0),
    }
    for name, (payload, wait, trickle) in cases.items():
        status, took = raw(port, payload, wait, trickle)
        out[name] = {"status": status, "seconds": round(took, 1)}
    for name, (method, path, body, ctype) in {
        "PUT /predict": ("PUT", "/predict", image, "image/jpeg"),
        "GET /predict": ("GET", "/predict", None, None),
        "multipart upload": ("POST", "/predict", *multipart(image)),
    }.items():
        status, data, took = request(port, method, path, body, ctype, timeout=30)
        out[name] = {
            "status": str(status),
            "seconds": round(took, 2),
            "body": data[:80].decode("utf-8", "replace"),
        }
    # 50 half-sent requests held open; meanwhile a normal request must still be answered.
    held = []
    for _ in range(50):
        s = socket.create_connection((HOST, port))
        s.sendall(head)
        held.append(s)
    time.sleep(1)
    threads = server.status().get("Threads")
    status, _, took = request(port, "POST", "/predict", image, "application/octet-stream", 30)
    time.sleep(14)
    still_open = 0
    for s in held:
        s.settimeout(0.05)
        try:
            s.recv(1)  # b"" (closed) or the start of an answer: the server let it go
        except TimeoutError:
            still_open += 1  # nothing sent and not closed: the server still holds it
        except OSError:
            pass
        s.close()
    out["50 half-sent requests"] = {
        "status": f"{still_open} still open after 15 s",
        "threads": threads,
        "normal request meanwhile": f"{status} in {took * 1000:.0f} ms",
    }
    return out


def big_png(path: Path) -> bytes:
    """A 7000x8000 greyscale PNG (a scanned page: mostly white, some text-like lines)."""
    if not path.is_file():
        arr = np.full((8000, 7000), 255, np.uint8)
        rng = np.random.default_rng(0)
        for y in range(200, 7800, 40):
            x0 = int(rng.integers(200, 800))
            arr[y : y + 12, x0 : x0 + int(rng.integers(2000, 6000))] = 30
        buf = io.BytesIO()
        Image.fromarray(arr, "L").save(buf, "PNG", optimize=True)
        path.write_bytes(buf.getvalue())
    return path.read_bytes()


def burst(server: Server, png: bytes, n: int = 8) -> dict:
    before = server.status()
    with ThreadPoolExecutor(n) as pool:
        results = list(
            pool.map(
                lambda _: request(server.port, "POST", "/predict", png, "image/png", 120),
                range(n),
            )
        )
    after = server.status()
    statuses = sorted({str(s) for s, _, _ in results})
    return {
        "statuses": ",".join(statuses),
        "seconds_max": round(max(t for _, _, t in results), 1),
        "rss_before_mb": round(before["VmRSS"] / 1024),
        "peak_rss_mb": round(after["VmHWM"] / 1024),
        "body": results[0][1][:120].decode("utf-8", "replace"),
    }


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="export folder or model file (onnx)")
    ap.add_argument("--image", required=True, help="the image POSTed in the load phase")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--label", default="after")
    ap.add_argument("--phases", default="load,abuse,burst")
    ap.add_argument("--requests", default="150,400,640", help="per level: 1, 8, 32 clients")
    ap.add_argument("--keep-alive", action="store_true", help="one connection per client thread")
    ap.add_argument("--out", default=None, help="write the numbers here as JSON")
    ap.add_argument("server_args", nargs="*", help="extra `imgclf serve` flags (after --)")
    args = ap.parse_args()
    image = Path(args.image).read_bytes()
    phases = args.phases.split(",")
    result: dict = {"label": args.label, "cpu": cpu_model(), "cores": os.cpu_count()}
    if "load" in phases:
        server = Server(Path(args.src), args.model, args.server_args)
        try:
            request(server.port, "POST", "/predict", image, "application/octet-stream")  # warm
            totals = [int(x) for x in args.requests.split(",")]
            result["load"] = [
                load(server, image, c, t, args.keep_alive)
                for c, t in zip((1, 8, 32), totals, strict=True)
            ]
            result["load_peak_rss_mb"] = round(server.status()["VmHWM"] / 1024)
        finally:
            server.stop()
    if "abuse" in phases:
        server = Server(Path(args.src), args.model, args.server_args)
        try:
            result["abuse"] = abuse(server, image)
        finally:
            server.stop()
    if "burst" in phases:
        png = big_png(Path(os.environ.get("TMPDIR", "/tmp")) / "imgclf_7000x8000_grey.png")
        server = Server(Path(args.src), args.model, args.server_args)
        try:
            result["burst"] = {"png_kb": len(png) // 1024, **burst(server, png)}
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
