"""The config file: every rule, each error naming its dotted key and line (sans-I/O)."""

from __future__ import annotations

import pytest

from wsrelay.config import (apply_overrides, auth_secret_from_env, demo_config, load_config, locate_keys,
                            parse_config, require_signing_key)
from wsrelay.errors import ConfigError, ConfigErrors

FULL = '''\
[relay]
host = "0.0.0.0"
port = 8765
admin_port = 9100            # /metrics, /healthz, /readyz; not public
drain_seconds = 30
public_url = "wss://relay.example.com"

[auth]
secret = "s3cret"
token_ttl = 300

[[agents]]
name = "my-agent"
organization = "my-org"
upstreams = ["ws://10.0.0.5:7860/ws", "ws://10.0.0.6:7860/ws"]
websocket_auth = "token"
public_keys = ["pk_live_1"]
max_sessions = 50
max_session_seconds = 7200

[[agents]]
name = "echo"
organization = "demo"
upstreams = ["wss://bot.example.com/ws?x=1"]
idle_timeout = 60
'''


def test_full_example_parses():
    cfg = parse_config(FULL, "relay.toml")
    assert cfg.relay.port == 8765 and cfg.relay.admin_port == 9100
    assert cfg.relay.public_url == "wss://relay.example.com"
    assert cfg.auth.keys == {"default": "s3cret"} and cfg.auth.active_key == "default"
    first, second = cfg.agents
    assert first.service_host == "my-agent.my-org"
    assert first.upstreams == ("ws://10.0.0.5:7860/ws", "ws://10.0.0.6:7860/ws")
    assert first.websocket_auth == "token" and first.public_keys == ("pk_live_1",)
    assert first.max_sessions == 50 and first.max_session_seconds == 7200
    assert first.line == 12 and second.line == 21
    assert second.idle_timeout == 60 and second.max_sessions is None


def _errors(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "c.toml")
    return info.value.errors


def _only(text: str) -> ConfigError:
    errors = _errors(text)
    assert len(errors) == 1, [e.describe() for e in errors]
    return errors[0]


AGENT = '[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://h"]\n'

BAD = [
    # (text, dotted key, line, words in the message)
    ('[relay]\nprot = 1\n', "relay.prot", 2, "did you mean 'port'"),
    ('[relay]\nport = "abc"\n', "relay.port", 2, "integer from 1 to 65535"),
    ('[relay]\nport = 70000\n', "relay.port", 2, "65535"),
    ('[relay]\nport = true\n', "relay.port", 2, "integer"),
    ('[relay]\nworkers = 0\n', "relay.workers", 2, "1 to 64"),
    ('[relay]\nport = 9000\nadmin_port = 9000\n', "relay.admin_port", 3, "differ"),
    ('[relay]\nhandshake_timeout = 0\n', "relay.handshake_timeout", 2, "above 0"),
    ('[relay]\nmax_request_head_bytes = 100000\n', "relay.max_request_head_bytes", 2, "1024 to 16384"),
    ('[relay]\nwrite_buffer_high = 2048\nwrite_buffer_low = 4096\n', "relay.write_buffer_low", 3, "below"),
    ('[relay]\nkeepalive_interval = 1\nkeepalive_timeout = 5\n', "relay.keepalive_timeout", 3, "exceed"),
    ('[relay]\ntls_cert = "c.pem"\n', "relay.tls_key", 1, "both"),
    ('[relay]\nlog_format = "xml"\n', "relay.log_format", 2, "'json'"),
    ('[relay]\nnonce_store = "redis"\n', "relay.redis_url", 1, "redis://"),
    ('[relay]\npublic_url = "relay.example.com"\n', "relay.public_url", 2, "wss://"),
    ('[relay]\nupstream_tls_verify = "no"\n', "relay.upstream_tls_verify", 2, "true or false"),
    ('[relais]\nport = 1\n', "relais", 1, "did you mean 'relay'"),
    ('[auth]\nsecret = ""\n', "auth.secret", 2, "non-empty"),
    ('[auth]\nsecret = "a"\nkeys = { k = "b" }\n', "auth.secret", 2, "not both"),
    ('[auth]\nkeys = { k2 = "a", k1 = "b" }\n', "auth.active_key", 1, "several"),
    ('[auth]\nkeys = { k2 = "a" }\nactive_key = "k9"\n', "auth.active_key", 3, "must name one of"),
    ('[auth]\nkeys = { "bad id!" = "a" }\n', "auth.keys.bad id!", 2, "key id"),
    ('[auth]\nsecret = "a"\ntoken_ttl = 0\n', "auth.token_ttl", 3, "1 to 86400"),
    ('[auth]\nsecret = "a"\nclock_skew = 999\n', "auth.clock_skew", 3, "0 to 300"),
    (AGENT + 'nmae = "x"\n', "agents[0].nmae", 5, "did you mean 'name'"),
    ('[[agents]]\norganization = "b"\nupstreams = ["ws://h"]\n', "agents[0]", 1, "name is required"),
    ('[[agents]]\nname = "a"\norganization = "b"\n', "agents[0]", 1, "upstreams is required"),
    ('[[agents]]\nname = "My.Agent"\norganization = "b"\nupstreams = ["ws://h"]\n', "agents[0].name", 2, "no dots"),
    ('[[agents]]\nname = "a"\norganization = "' + "o" * 64 + '"\nupstreams = ["ws://h"]\n',
     "agents[0].organization", 3, "1-63"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = []\n', "agents[0].upstreams", 4, "non-empty"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://h", "http://h"]\n',
     "agents[0].upstreams[1]", 4, "ws:// or wss://"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://u:p@h"]\n', "agents[0].upstreams[0]", 4, "user"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://h:99999"]\n', "agents[0].upstreams[0]", 4, "port"),
    (AGENT + 'websocket_auth = "jwt"\n', "agents[0].websocket_auth", 5, "'token'"),
    (AGENT + 'max_sessions = 0\n', "agents[0].max_sessions", 5, "positive"),
    (AGENT + 'max_session_seconds = -1\n', "agents[0].max_session_seconds", 5, "above 0"),
    (AGENT + 'idle_timeout = "1m"\n', "agents[0].idle_timeout", 5, "number"),
    (AGENT + 'public_keys = "pk"\n', "agents[0].public_keys", 5, "list"),
    (AGENT + AGENT, "agents[1]", 5, "defined twice"),
    ('[relay]\nport = \n', None, 2, "not valid TOML"),
]


@pytest.mark.parametrize("text,key,line,words", BAD, ids=[b[1] or "syntax" for b in BAD])
def test_each_error_names_key_and_line(text, key, line, words):
    error = _only(text)
    assert error.key == key
    assert error.line == line
    assert words in error.message
    assert error.describe().startswith(f"c.toml:{line}")


def test_all_errors_are_reported_together():
    errors = _errors('[relay]\nprot = 1\nworkers = 99\n[[agents]]\nname = "A"\norganization = "b"\n'
                     'upstreams = ["ws://h"]\n')
    assert [(e.key, e.line) for e in errors] == [("relay.prot", 2), ("relay.workers", 3), ("agents[0].name", 5)]


def test_keys_and_active_key_and_single_key_default():
    cfg = parse_config('[auth]\nkeys = { k2 = "new", k1 = "old" }\nactive_key = "k2"\n')
    assert cfg.auth.keys == {"k2": "new", "k1": "old"} and cfg.auth.active_key == "k2"
    assert parse_config('[auth]\nkeys = { only = "x" }\n').auth.active_key == "only"


def test_environment_secret_overrides_the_file():
    cfg = parse_config('[auth]\nkeys = { k2 = "new" }\n')
    assert auth_secret_from_env(cfg, {}).auth.keys == {"k2": "new"}
    env = auth_secret_from_env(cfg, {"WSRELAY_AUTH_SECRET": "from-env"})
    assert env.auth.keys == {"env": "from-env"} and env.auth.active_key == "env"
    with pytest.raises(ConfigError) as info:       # undecodable bytes arrive as surrogates
        auth_secret_from_env(cfg, {"WSRELAY_AUTH_SECRET": b"sec\xffret".decode("utf-8", "surrogateescape")})
    assert info.value.key == "WSRELAY_AUTH_SECRET" and "UTF-8" in str(info.value)


def test_token_agent_without_key_is_refused_at_start():
    cfg = parse_config(AGENT + 'websocket_auth = "token"\n')
    with pytest.raises(ConfigError) as info:
        require_signing_key(cfg)
    assert "a.b" in str(info.value) and info.value.key == "auth.secret"
    require_signing_key(auth_secret_from_env(cfg, {"WSRELAY_AUTH_SECRET": "x"}))


def test_overrides_and_demo():
    cfg = apply_overrides(parse_config(FULL), host="127.0.0.1", port=9999, workers=2)
    assert (cfg.relay.host, cfg.relay.port, cfg.relay.workers) == ("127.0.0.1", 9999, 2)
    with pytest.raises(ConfigErrors):
        apply_overrides(cfg, workers=0)
    demo = demo_config("ws://127.0.0.1:1234/")
    assert [a.service_host for a in demo.agents] == ["echo.demo"]
    assert demo.agents[0].upstreams == ("ws://127.0.0.1:1234/",) and demo.agents[0].websocket_auth == "none"


def test_no_agents_is_valid():
    assert parse_config("").agents == ()


def test_locate_keys_tables_arrays_and_inline_tables():
    where = locate_keys('[relay]\nport = 1\n[auth]\nkeys = { k2 = "a", "k1" = "b" }\n[[agents]]\nname = "x"\n'
                        '[[agents]]\n  name = "y"\n')
    assert where["relay.port"] == 2 and where["auth.keys.k2"] == 4 and where["auth.keys.k1"] == 4
    assert where["agents[0].name"] == 6 and where["agents[1].name"] == 8 and where["agents[1]"] == 7


def test_hostile_files(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1024 * 1024 + 10))
    with pytest.raises(ConfigErrors, match="limit"):
        load_config(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'[relay]\nhost = "\xff\xfe"\n')
    with pytest.raises(ConfigErrors, match="UTF-8") as info:
        load_config(binary)
    assert info.value.errors[0].line == 2
    with pytest.raises(ConfigErrors, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigErrors, match="TOML"):
        parse_config("a = " + "[" * 2000 + "]" * 2000)
    with pytest.raises(ConfigErrors):
        parse_config('relay = 5\nagents = "x"\n')
