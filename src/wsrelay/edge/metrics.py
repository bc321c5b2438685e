"""Prometheus metrics of one relay process, in a registry of its own.

Per-frame counters are C integers inside the pump; ``FrameCollector`` reads them at
scrape time, so relaying a frame never calls into Python for metrics. Live sessions
and refused handshakes are read from the relay's own book and counter when scraped,
so each is kept in one place. Label values are bounded: agents come from the config,
statuses and outcomes (``Outcome``) from small fixed sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__, pump

class FrameCollector:
    """Frames/bytes per direction and live sessions per agent, computed when scraped."""

    def __init__(self, active: Callable[[], dict[tuple[str, str], int]],
                 rejections: Callable[[], Mapping[int, int]]) -> None:
        self._active = active
        self._rejections = rejections

    def collect(self):
        totals = pump.totals()
        frames = CounterMetricFamily("wsrelay_frames", "Frames relayed, by direction", labels=["direction"])
        data = CounterMetricFamily("wsrelay_bytes", "Payload bytes relayed, by direction", labels=["direction"])
        for direction, key in (("client_to_bot", "up"), ("bot_to_client", "down")):
            frames.add_metric([direction], totals[f"frames_{key}"])
            data.add_metric([direction], totals[f"bytes_{key}"])
        yield frames
        yield data
        active = GaugeMetricFamily("wsrelay_sessions_active", "Sessions relayed now",
                                   labels=["agent", "organization"])
        for (agent, organization), count in sorted(self._active().items()):
            active.add_metric([agent, organization], count)
        yield active
        refused = CounterMetricFamily("wsrelay_handshake_rejections", "Handshakes refused before upgrade",
                                      labels=["status"])
        for status, count in sorted(self._rejections().items()):
            refused.add_metric([str(int(status))], count)
        yield refused


def build_info(registry: CollectorRegistry) -> None:
    """``wsrelay_build_info{version, pump} 1``: which release runs, and whether its pump is the
    compiled one (a source install without a compiler falls back to Python, and is slower)."""
    info = Gauge("wsrelay_build_info", "The running wsrelay release and its pump implementation",
                 ["version", "pump"], registry=registry)
    info.labels(__version__, pump.default_name()).set(1)


class RelayMetrics:
    """The relay's metrics; ``render()`` is the /metrics body."""

    def __init__(self, *, active: Callable[[], dict[tuple[str, str], int]],
                 rejections: Callable[[], Mapping[int, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry.register(FrameCollector(active, rejections))
        build_info(self.registry)
        self.sessions = Counter("wsrelay_sessions", "Sessions ended, by outcome",
                                ["agent", "organization", "outcome"], registry=self.registry)
        self.upstream_connect = Histogram(
            "wsrelay_upstream_connect_seconds", "Time to connect to a bot and get its 101",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry)
        self.session_seconds = Histogram(
            "wsrelay_session_seconds", "Duration of relayed sessions",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200), registry=self.registry)
        # Voice telemetry: the pump's per-direction figures, observed once per session at its end.
        self.jitter = Histogram(
            "wsrelay_session_jitter_seconds", "Interarrival jitter of data frames (RFC 3550 A.8) at session end",
            ["direction"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
            registry=self.registry)
        self.max_gap = Histogram(
            "wsrelay_session_max_gap_seconds", "Longest pause between two data frames of a session",
            ["direction"], buckets=(0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 5, 10, 30, 120),
            registry=self.registry)
        self.first_frame = Histogram(
            "wsrelay_session_first_frame_seconds", "Time from the client's 101 to the first data frame",
            ["direction"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
            registry=self.registry)
        self.gaps = Counter("wsrelay_frame_gaps", "Pauses between data frames longer than gap_threshold_ms",
                            ["direction"], registry=self.registry)
        # A direction with no data frame has no first-frame time: counted here instead of unseen.
        self.silent = Counter("wsrelay_session_silent", "Sessions that ended with no data frame in this direction",
                              ["direction"], registry=self.registry)

    def _child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once: a session's end costs a dict lookup per series.

        The cache holds a series only once it has been used, as prometheus-client does, so
        a series nobody observed is still absent from ``/metrics``; it is bounded like the
        series themselves (agents, outcomes, directions).
        """
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def session_ended(self, agent: str, organization: str, outcome: str, seconds: float,
                      timing: Mapping[str, Mapping] | None = None) -> None:
        self._child(self.sessions, agent, organization, outcome).inc()
        self.session_seconds.observe(seconds)
        for key, direction in (("up", "client_to_bot"), ("down", "bot_to_client")):
            figures = (timing or {}).get(key)
            if not figures:
                continue
            if figures["first_frame_ms"] is None:
                self._child(self.silent, direction).inc()      # no data frame that way: nothing to time
                continue
            self._child(self.first_frame, direction).observe(figures["first_frame_ms"] / 1000)
            self._child(self.max_gap, direction).observe(figures["max_gap_ms"] / 1000)
            self._child(self.jitter, direction).observe(figures["jitter_ms"] / 1000)
            if figures["gaps"]:
                self._child(self.gaps, direction).inc(figures["gaps"])

    def upstream_connected(self, seconds: float) -> None:
        self.upstream_connect.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
