"""Prometheus text metrics (exposition format 0.0.4), kept in the event loop's thread.

Requests by route, method and status; latency histograms by route; errors by reason code; model
reloads; the model being served; the memory budgets; the process's memory. Written by hand: a
few counters need no client library, and every update runs in the one event-loop thread.
"""

from __future__ import annotations

import resource
from bisect import bisect_left
from collections import Counter, defaultdict
from pathlib import Path

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROUTES = frozenset(
    {"/predict", "/predict/batch", "/health", "/ready", "/metrics", "/reload", "/docs"}
)


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.errors: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.images: Counter[str] = Counter()  # answered images by outcome
        self.hist: dict[str, list[int]] = {}
        self.hist_sum: defaultdict[str, float] = defaultdict(float)
        self.in_flight = 0

    def observe(
        self, method: str, path: str, status: int, seconds: float, reason: str | None
    ) -> None:
        route = path if path in ROUTES else "other"  # bounded label values
        self.requests[(route, method if route != "other" else "-", status)] += 1
        counts = self.hist.setdefault(route, [0] * (len(BUCKETS) + 1))
        counts[bisect_left(BUCKETS, seconds)] += 1
        self.hist_sum[route] += seconds
        if status >= 400:
            self.errors[reason or f"http_{status}"] += 1

    def render(self, model: dict[str, str], gauges: dict[str, float]) -> str:
        out = [
            "# HELP imgclf_requests_total HTTP requests answered.",
            "# TYPE imgclf_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            out.append(
                f'imgclf_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}'
            )
        out += [
            "# HELP imgclf_request_duration_seconds Time from headers received to response sent.",
            "# TYPE imgclf_request_duration_seconds histogram",
        ]
        for route, counts in sorted(self.hist.items()):
            running = 0
            for bound, n in zip((*BUCKETS, "+Inf"), counts, strict=True):
                running += n
                out.append(
                    f'imgclf_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} '
                    f"{running}"
                )
            out.append(
                f'imgclf_request_duration_seconds_sum{{route="{route}"}} {self.hist_sum[route]:.6f}'
            )
            out.append(f'imgclf_request_duration_seconds_count{{route="{route}"}} {running}')
        for name, counter, label, help_ in (
            ("imgclf_errors_total", self.errors, "reason", "Refused requests by reason code."),
            ("imgclf_images_total", self.images, "outcome", "Images answered, by outcome."),
            ("imgclf_model_reloads_total", self.reloads, "result", "Model reload attempts."),
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            out += [f'{name}{{{label}="{k}"}} {v}' for k, v in sorted(counter.items())]
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(model.items()))
        out += [
            "# HELP imgclf_model_info The model being served (value 1).",
            "# TYPE imgclf_model_info gauge",
            f"imgclf_model_info{{{labels}}} 1",
            "# TYPE imgclf_requests_in_flight gauge",
            f"imgclf_requests_in_flight {self.in_flight}",
        ]
        gauges = {**gauges, **process_memory()}
        for name, value in sorted(gauges.items()):
            out += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def process_memory() -> dict[str, float]:
    """Resident and peak resident memory of this process, in bytes (Linux; peak elsewhere)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out = {"process_peak_resident_memory_bytes": float(peak)}
    statm = Path("/proc/self/statm")
    if statm.is_file():
        pages = int(statm.read_text().split()[1])
        out["process_resident_memory_bytes"] = float(pages * resource.getpagesize())
    return out
