"""The session's log line (telemetry/logs.py): written straight to the relay's own handler when
nothing else listens, and then byte for byte the line a log record would have made."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, strategies as st

from wsrelay.telemetry import logs

FIELDS = {"event": "session_end", "session_id": "0b6f7c2e-3d4a-4f5b-9c8d-1e2f3a4b5c6d", "agent": "echo",
          "organization": "demo", "client": "127.0.0.1", "subprotocol": None, "frames_up": 3, "bytes_up": 1920,
          "close_from_client": 1000, "end_reason": "closed", "upstream_connect_ms": 0.412,
          "first_frame_ms_up": 1.5, "note": "a value with spaces and \"quotes\"", "duration_s": 2.25}


@pytest.fixture
def relay_logging():
    """setup_logging as `wsrelay serve` calls it; the process's logging put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogRecordFactory()
    yield
    root.handlers[:], level, factory = saved
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    logging.captureWarnings(False)
    logs._direct = None


def records_made() -> list[logging.LogRecord]:
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args, **kwargs):
        record = factory(*args, **kwargs)
        made.append(record)
        return record
    logging.setLogRecordFactory(counting)
    return made


@pytest.mark.parametrize("style", ["json", "text"])
@pytest.mark.parametrize("write", [
    lambda: logs.log_session(FIELDS),
    lambda: logs.log_refusal(status=404, reason="unknown service host 'x.y'", client="127.0.0.1", target="/ws"),
    lambda: logs.log_session_refused(code=1008, reason="no start", client="127.0.0.1", target="/ws/twilio",
                                     provider="twilio", service_host=None),
], ids=["session", "refusal", "provider refusal"])
def test_the_direct_line_is_the_log_records_line(relay_logging, capsys, style, write):
    logs.setup_logging(style)
    made = records_made()
    write()
    direct = capsys.readouterr().err
    assert made == [], "with only the relay's handler, no LogRecord is made"
    listener = logging.NullHandler()                  # something else listens: a record, as before
    logging.getLogger().addHandler(listener)
    write()
    logging.getLogger().removeHandler(listener)
    recorded = capsys.readouterr().err
    assert len(made) == 1 and made[0].fields == made[0].__dict__["fields"]
    assert direct.count("\n") == recorded.count("\n") == 1
    if style == "json":
        first, second = json.loads(direct), json.loads(recorded)
        assert first.pop("ts") == pytest.approx(second.pop("ts"), abs=5)
        assert first == second
        assert list(first) == ["level", "logger", *made[0].fields]        # the same keys, in order
    else:
        assert direct.split(" ", 1)[1] == recorded.split(" ", 1)[1]      # all but ts=...


def test_a_level_above_info_silences_the_direct_line_too(relay_logging, capsys):
    logs.setup_logging("json", level=logging.WARNING)
    logs.log_session(FIELDS)
    assert capsys.readouterr().err == ""


VALUES = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))


@given(st.dictionaries(st.text(min_size=1, max_size=20), VALUES, max_size=35))
def test_a_json_line_says_what_json_dumps_says_in_ascii(fields):
    """The fast encoder and json.dumps agree on every flat line, and the line is ASCII."""
    line = logs.StructuredFormatter("json").render(fields)
    assert line.isascii() and "\n" not in line
    assert json.loads(line) == json.loads(json.dumps(fields))


def test_objects_json_has_no_type_for_are_their_str():
    class Peer:
        def __str__(self) -> str:
            return "peer!"
    assert json.loads(logs.StructuredFormatter("json").render({"p": Peer(), "é": "ü"})) == {"p": "peer!", "é": "ü"}
