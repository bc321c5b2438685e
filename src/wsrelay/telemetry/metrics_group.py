"""``--workers N``: one /metrics for the whole process group, gathered when scraped.

Each worker keeps its own metrics (frame counters are C integers in its pump, sessions
are in its own book), so worker 0 — the one serving the admin port — asks the others at
scrape time: every other worker answers its own exposition on a Unix socket in a
directory the parent made before forking, and worker 0 adds the samples up. Counters,
histograms and per-agent gauges are sums; gauges that describe the same thing seen by
every worker (``MAX_GAUGES``: instances per agent, build info) take the largest value.
A worker that does not answer within ``timeout`` is left out of that scrape, and
``wsrelay_workers_scraped`` says how many answered.

The same sockets serve the admin port's live sessions (telemetry/live_sessions.py): worker 0
sends one request line — ``metrics``, ``sessions`` (that worker's live sessions as JSON) or
``end <id>`` (close one, answers ``1`` or ``0``) — and reads the answer to the end.

prometheus-client's multiprocess mode was the alternative; it cannot carry the custom
collectors that read the pump's counters at scrape time, which this keeps as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from .live_sessions import LiveSessions

log = logging.getLogger("wsrelay.metrics")

MAX_GAUGES = frozenset({"wsrelay_upstream_instances", "wsrelay_build_info"})
MAX_EXPOSITION = 16 * 1024 * 1024


def socket_path(directory: str, worker: int) -> str:
    return os.path.join(directory, f"worker-{worker}.sock")


async def serve_peer(directory: str, worker: int, render: Callable[[], tuple[bytes, str]],
                     sessions: "LiveSessions | None" = None) -> asyncio.AbstractServer:
    """Worker ``worker`` (> 0): answer worker 0's one request per connection, then close."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = (await asyncio.wait_for(reader.readline(), 2.0)).strip()
            except (asyncio.TimeoutError, ValueError):       # ValueError: a line over the reader's limit
                return
            verb, _, argument = request.partition(b" ")
            if verb == b"sessions" and sessions is not None:
                writer.write(json.dumps(sessions.local_views()).encode())
            elif verb == b"end" and sessions is not None:
                writer.write(b"1" if sessions.end_local(argument.decode("utf-8", "replace")) else b"0")
            else:
                writer.write(render()[0])
            await writer.drain()
        finally:
            writer.close()
    path = socket_path(directory, worker)
    if os.path.exists(path):
        os.unlink(path)
    return await asyncio.start_unix_server(answer, path)


async def _fetch(path: str, timeout: float, request: bytes = b"metrics\n") -> str | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(request)
                data = await reader.read(MAX_EXPOSITION)
                while chunk := await reader.read(MAX_EXPOSITION):
                    data += chunk
            finally:
                writer.close()
        return data.decode("utf-8")
    except (OSError, TimeoutError, UnicodeDecodeError):
        return None


def merge(texts: list[str]) -> bytes:
    """Several expositions of the same metrics as one: samples added up (``MAX_GAUGES``: the largest)."""
    families: dict[str, tuple[str, str]] = {}              # name -> (help, type)
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, (family.documentation, family.type))
            book = values.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):          # per-process start times: no sum means anything
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name in MAX_GAUGES:
                    book[key] = max(book.get(key, sample.value), sample.value)
                else:
                    book[key] = book.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name, (documentation, kind) in families.items():
        if not values[name]:
            continue
        shown = f"{name}_total" if kind == "counter" else name     # as prometheus-client writes it
        lines.append(f"# HELP {shown} {_escape(documentation)}")
        lines.append(f"# TYPE {shown} {kind}")
        for (sample_name, labels), value in values[name].items():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{label_text}}} {_number(value)}" if label_text
                         else f"{sample_name} {_number(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


def group_renderer(directory: str, workers: int, render: Callable[[], tuple[bytes, str]], *,
                   timeout: float = 2.0) -> Callable[[], Awaitable[tuple[bytes, str]]]:
    """Worker 0's /metrics: its own exposition plus every other worker's, merged."""
    async def render_group() -> tuple[bytes, str]:
        own = render()[0].decode("utf-8")
        peers = await asyncio.gather(*(_fetch(socket_path(directory, w), timeout) for w in range(1, workers)))
        texts = [own] + [p for p in peers if p is not None]
        if len(texts) < workers:
            log.warning("metrics: %d of %d workers answered", len(texts), workers)
        scraped = (f"# HELP wsrelay_workers_scraped Worker processes whose metrics this scrape includes\n"
                   f"# TYPE wsrelay_workers_scraped gauge\nwsrelay_workers_scraped {len(texts)}.0\n")
        return merge(texts) + scraped.encode(), CONTENT_TYPE_LATEST
    return render_group


def group_sessions(directory: str, workers: int, *, timeout: float = 2.0
                   ) -> tuple[Callable[[], Awaitable[tuple[list[dict], int]]],
                              Callable[[str], Awaitable[tuple[bool, int]]]]:
    """Worker 0's view of the other workers' live sessions: (list them, end one by id), each
    with the number of workers that did not answer. A worker that does not answer in
    ``timeout`` (or answers nonsense) is left out of that answer, and counted; its sessions go on."""
    paths = [socket_path(directory, w) for w in range(1, workers)]

    async def views() -> tuple[list[dict], int]:
        answers = await asyncio.gather(*(_fetch(p, timeout, b"sessions\n") for p in paths))
        result: list[dict] = []
        missing = 0
        for text in answers:
            if text is None:
                missing += 1
                continue
            try:
                result += json.loads(text)
            except ValueError:
                missing += 1
                log.warning("sessions: a worker answered something that is not JSON")
        return result, missing

    async def end(session_id: str) -> tuple[bool, int]:
        request = b"end " + session_id.encode("utf-8", "replace")[:200] + b"\n"
        answers = await asyncio.gather(*(_fetch(p, timeout, request) for p in paths))
        return any(a == "1" for a in answers), sum(1 for a in answers if a is None)

    return views, end
