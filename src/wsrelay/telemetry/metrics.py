"""Prometheus metrics of one relay process, in a registry of its own.

Per-frame counters are C integers inside the pump; ``FrameCollector`` reads them at
scrape time, so relaying a frame never calls into Python for metrics. Per-session
figures (starts, outcomes, durations, the voice telemetry, bot connect times) are plain
integers and ``Tally`` buckets kept here, turned into series by ``SessionCollector``
when scraped, so a session's end formats nothing. Live sessions and refused handshakes
are read from the relay's own book and counter when scraped, so each is kept in one
place. Label values are bounded: agents come from the config, statuses and outcomes
(``Outcome``) from small fixed sets.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from typing import Callable

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

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


class Tally:
    """One histogram's observations as plain numbers: a count per bucket and a sum.

    A session's end adds to a few of these instead of calling prometheus-client's
    ``observe`` (a lock and a value object per bucket); ``buckets()`` gives the same
    series' cumulative counts at scrape time. ``counts[i]`` holds the observations in
    ``(bounds[i-1], bounds[i]]``, the last one those above every bound.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts per ``le`` bound, labelled as prometheus-client labels them."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            out.append((floatToGoString(bound), running))
        return out


# The histograms' buckets, in seconds, and the help text of every series: declared once.
UPSTREAM_CONNECT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SESSION_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
JITTER = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)
MAX_GAP = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 5, 10, 30, 120)
FIRST_FRAME = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30)
# Voice telemetry, per direction: the pump's figures, observed once per session at its end.
PER_DIRECTION = (
    ("first_frame_ms", "wsrelay_session_first_frame_seconds", "Time from the client's 101 to the first data frame",
     FIRST_FRAME),
    ("max_gap_ms", "wsrelay_session_max_gap_seconds", "Longest pause between two data frames of a session", MAX_GAP),
    ("jitter_ms", "wsrelay_session_jitter_seconds",
     "Interarrival jitter of data frames (RFC 3550 A.8) at session end", JITTER),
)
DIRECTIONS = (("up", "client_to_bot"), ("down", "bot_to_client"))


class SessionCollector:
    """What session ends and bot connects leave behind, kept as integers by ``RelayMetrics``
    and rendered as Prometheus series when scraped.

    A labelled series appears once something was counted in it, as prometheus-client's
    labelled metrics do (a direction with no data frame has no first-frame series); the
    two unlabelled histograms are always there.
    """

    def __init__(self, metrics: "RelayMetrics") -> None:
        self._m = metrics

    def collect(self):
        m = self._m
        started = CounterMetricFamily("wsrelay_sessions_started", "Sessions started: the client's 101 written",
                                      labels=["agent", "organization"])
        for labels, count in m.started.items():
            started.add_metric(list(labels), count)
        yield started
        sessions = CounterMetricFamily("wsrelay_sessions", "Sessions ended, by outcome",
                                       labels=["agent", "organization", "outcome"])
        for labels, count in m.sessions.items():
            sessions.add_metric(list(labels), count)
        yield sessions
        yield _histogram("wsrelay_upstream_connect_seconds", "Time to connect to a bot and get its 101",
                         m.upstream_connect)
        yield _histogram("wsrelay_session_seconds", "Duration of relayed sessions", m.session_seconds)
        for key, name, documentation, _ in PER_DIRECTION:
            family = HistogramMetricFamily(name, documentation, labels=["direction"])
            for _, direction in DIRECTIONS:
                tally = m.timing.get((key, direction))
                if tally is not None:
                    family.add_metric([direction], tally.buckets(), tally.total)
            yield family
        gaps = CounterMetricFamily("wsrelay_frame_gaps", "Pauses between data frames longer than gap_threshold_ms",
                                   labels=["direction"])
        silent = CounterMetricFamily("wsrelay_session_silent",
                                     "Sessions that ended with no data frame in this direction", labels=["direction"])
        for _, direction in DIRECTIONS:
            if direction in m.gaps:
                gaps.add_metric([direction], m.gaps[direction])
            if direction in m.silent:
                silent.add_metric([direction], m.silent[direction])
        yield gaps
        yield silent
        resumes = CounterMetricFamily("wsrelay_session_resumes", "Clients that came back to their session "
                                      "(session resume)", labels=["agent", "organization"])
        for labels, count in m.resumes.items():
            resumes.add_metric(list(labels), count)
        yield resumes
        failures = CounterMetricFamily("wsrelay_session_resume_failures", "Resumes refused, by reason",
                                       labels=["reason"])
        for reason, count in m.resume_failures.items():
            failures.add_metric([reason], count)
        yield failures
        detached = CounterMetricFamily("wsrelay_sessions_ended_detached", "Sessions that ended while their "
                                       "client was away (session resume)", labels=["agent", "organization"])
        for labels, count in m.ended_detached.items():
            detached.add_metric(list(labels), count)
        yield detached
        carried = CounterMetricFamily("wsrelay_session_resumes_carried", "Resumes carried to the fleet's "
                                      "relay that holds the session")
        carried.add_metric([], m.resumes_carried)
        yield carried


def _histogram(name: str, documentation: str, tally: Tally) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=tally.buckets(), sum_value=tally.total)


class RelayMetrics:
    """The relay's metrics; ``render()`` is the /metrics body.

    Per session, the start adds one integer here (``session_started``) and the end a handful
    (``session_ended``); nothing is formatted until a scrape asks (``SessionCollector``).
    """

    def __init__(self, *, active: Callable[[], dict[tuple[str, str], int]],
                 rejections: Callable[[], Mapping[int, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FrameCollector(active, rejections))
        build_info(self.registry)
        self.started: dict[tuple[str, str], int] = {}                  # (agent, organization)
        self.sessions: dict[tuple[str, str, str], int] = {}           # (agent, organization, outcome)
        self.upstream_connect = Tally(UPSTREAM_CONNECT)
        self.session_seconds = Tally(SESSION_SECONDS)
        self.timing: dict[tuple[str, str], Tally] = {}                  # (figure, direction)
        self.gaps: dict[str, int] = {}
        self.silent: dict[str, int] = {}
        self.resumes: dict[tuple[str, str], int] = {}                  # session resume (docs/resume.md)
        self.resume_failures: dict[str, int] = {}                      # reason
        self.ended_detached: dict[tuple[str, str], int] = {}
        self.resumes_carried = 0
        self.registry.register(SessionCollector(self))

    def session_started(self, agent: str, organization: str) -> None:
        """A session's client got its 101. Every such session is later counted once by
        ``session_ended``, so at any scrape ``started = ended (all outcomes) + the live
        sessions past their 101``: a session ended twice or never would show there."""
        key = (agent, organization)
        self.started[key] = self.started.get(key, 0) + 1

    def session_ended(self, agent: str, organization: str, outcome: str, seconds: float,
                      timing: Mapping[str, Mapping] | None = None) -> None:
        key = (agent, organization, outcome)
        self.sessions[key] = self.sessions.get(key, 0) + 1
        self.session_seconds.observe(seconds)
        if not timing:
            return
        for figure_key, direction in DIRECTIONS:
            figures = timing.get(figure_key)
            if not figures:
                continue
            if figures["first_frame_ms"] is None:
                self.silent[direction] = self.silent.get(direction, 0) + 1   # no data frame that way
                continue
            for key_ms, _, _, bounds in PER_DIRECTION:
                tally = self.timing.get((key_ms, direction))
                if tally is None:
                    tally = self.timing[(key_ms, direction)] = Tally(bounds)
                tally.observe(figures[key_ms] / 1000)
            if figures["gaps"]:
                self.gaps[direction] = self.gaps.get(direction, 0) + figures["gaps"]

    def session_resumed(self, agent: str, organization: str) -> None:
        key = (agent, organization)
        self.resumes[key] = self.resumes.get(key, 0) + 1

    def resume_failed(self, reason: str) -> None:
        self.resume_failures[reason] = self.resume_failures.get(reason, 0) + 1

    def resume_carried(self) -> None:
        self.resumes_carried += 1

    def session_ended_detached(self, agent: str, organization: str) -> None:
        key = (agent, organization)
        self.ended_detached[key] = self.ended_detached.get(key, 0) + 1

    def upstream_connected(self, seconds: float) -> None:
        self.upstream_connect.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
