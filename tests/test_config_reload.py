"""What a running relay takes from a reloaded file (config/reload.py), without a relay."""

from __future__ import annotations

from wsrelay.config import parse_config
from wsrelay.config.reload import reloaded

SECRET = "whsec_" + "A" * 32
BASE = """
[relay]
port = 8765
cors_origins = ["https://a.example"]

[auth]
secret = "0123456789abcdef0123456789abcdef"

[[agents]]
name = "echo"
organization = "demo"
upstreams = ["ws://127.0.0.1:9000/ws"]
"""


def test_agents_auth_and_cors_origins_follow_the_file_and_nothing_waits():
    running = parse_config(BASE)
    new = parse_config(BASE.replace("https://a.example", "https://b.example")
                       .replace("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")
                       .replace('name = "echo"', 'name = "talk"'))
    config, waiting = reloaded(running, new)
    assert waiting == []
    assert config.relay.cors_origins == ("https://b.example",)
    assert config.auth == new.auth and [a.name for a in config.agents] == ["talk"]


def test_what_needs_a_restart_keeps_its_running_value_and_is_named():
    running = parse_config(BASE)
    new = parse_config(BASE.replace("port = 8765", "port = 8766\nclose_timeout = 3")
                       + f'\n[fleet]\nredis_url = "redis://127.0.0.1:6379/0"\n'
                       + f'\n[webhooks]\nurl = "https://h.example/in"\nsecret = "{SECRET}"\n')
    config, waiting = reloaded(running, new)
    assert waiting == ["relay.port", "relay.close_timeout", "[fleet]", "[webhooks]"]
    assert config.relay.port == 8765 and config.relay.close_timeout == running.relay.close_timeout
    assert config.fleet == running.fleet and config.webhooks == running.webhooks
    assert not config.webhooks.enabled
