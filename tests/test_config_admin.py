"""The admin port's and the telemetry's config keys: [relay] admin_token, admin_host, gap_threshold_ms."""

from __future__ import annotations

import pytest

from wsrelay.config import parse_config
from wsrelay.errors import ConfigErrors


def only_error(text: str):
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "relay.toml")
    assert len(info.value.errors) == 1, [e.describe() for e in info.value.errors]
    return info.value.errors[0]


def test_defaults_are_no_token_loopback_and_100ms():
    """The admin port shows client addresses and ends sessions: loopback unless told otherwise,
    whatever the public ``host`` is."""
    relay = parse_config('[relay]\nhost = "0.0.0.0"\nport = 8765\n').relay
    assert relay.admin_token is None and relay.admin_host == "127.0.0.1" and relay.gap_threshold_ms == 100.0


def test_the_keys_are_read():
    relay = parse_config('[relay]\nadmin_token = "0123456789abcdef-xyz"\nadmin_host = "127.0.0.1"\n'
                         "gap_threshold_ms = 250\n").relay
    assert (relay.admin_token, relay.admin_host, relay.gap_threshold_ms) == ("0123456789abcdef-xyz", "127.0.0.1", 250.0)


@pytest.mark.parametrize("value", ['"short"', '"has a space in it, long enough"', '"tab\\there-0123456789"',
                                   '"é-not-ascii-0123456789"', '"' + "x" * 513 + '"', "12345678901234567890", "[]"])
def test_a_weak_or_unsendable_admin_token_names_its_key_and_line(value):
    error = only_error(f"[relay]\nport = 8765\nadmin_token = {value}\n")
    assert error.key == "relay.admin_token" and error.line == 3
    assert "admin_token" in str(error)


@pytest.mark.parametrize("value", ["0", "-5", '"100"', "true", "3600001"])
def test_gap_threshold_must_be_a_positive_number_of_milliseconds(value):
    error = only_error(f"[relay]\ngap_threshold_ms = {value}\n")
    assert error.key == "relay.gap_threshold_ms" and error.line == 2
    assert "milliseconds" in str(error) or "number" in str(error)


@pytest.mark.parametrize("value", ['""', '"127.0.0.1 "', '"a\\u0000b"', "5"])
def test_a_bad_admin_host_names_its_key(value):
    error = only_error(f"[relay]\nadmin_host = {value}\n")
    assert error.key == "relay.admin_host" and error.line == 2
