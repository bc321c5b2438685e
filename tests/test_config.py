"""The config file: every rule, each error naming its dotted key and line (sans-I/O)."""

from __future__ import annotations

import json
import time

import pytest

from wsrelay.config import (apply_overrides, auth_secret_from_env, demo_config, load_config, locate_keys,
                            parse_config, require_shared_nonces, require_signing_key, nonce_store_of)
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
    ('[relay]\ntls_cert = "c.pem"\n', "relay.tls_cert", 2, "relay.tls_key is not"),
    ('[relay]\ntls_key = "k.pem"\n', "relay.tls_key", 2, "relay.tls_cert is not"),
    ('[relay]\nlog_format = "xml"\n', "relay.log_format", 2, "'json'"),
    ('[relay]\nnonce_store = "redis"\n', "relay.nonce_store", 2, "redis://"),
    ('[relay]\nnonce_store = "redis"\nredis_url = "http://h"\n', "relay.redis_url", 3, "redis://"),
    ('[relay]\npublic_url = "relay.example.com"\n', "relay.public_url", 2, "wss://"),
    ('[relay]\nupstream_tls_verify = "no"\n', "relay.upstream_tls_verify", 2, "true or false"),
    ('[relais]\nport = 1\n', "relais", 1, "did you mean 'relay'"),
    ('[auth]\nsecret = ""\n', "auth.secret", 2, "non-empty"),
    ('[auth]\nsecret = "a"\nkeys = { k = "b" }\n', "auth.secret", 2, "not both"),
    ('[auth]\nkeys = { k2 = "a", k1 = "b" }\n', "auth.keys", 2, "several"),
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
    (AGENT + 'websocket_auth = "jwt"\n', "agents[0].websocket_auth", 5, "'twilio-signature'"),
    ('[relay]\nprovider_start_timeout = 0\n', "relay.provider_start_timeout", 2, "above 0"),
    ('[relay]\nprovider_start_timeout = "10"\n', "relay.provider_start_timeout", 2, "number above 0"),
    ('[relay]\nprovider_start_timout = 10\n', "relay.provider_start_timout", 2,
     "did you mean 'provider_start_timeout'"),
    (AGENT + 'websocket_auth = "twilio-signature"\n', "agents[0].websocket_auth", 5, "needs agents[0].twilio_auth_token"),
    (AGENT + 'twilio_auth_token = "abc"\n', "agents[0].twilio_auth_token", 5, 'only with websocket_auth = "twilio-signature"'),
    (AGENT + 'websocket_auth = "twilio-signature"\ntwilio_auth_token = 5\n', "agents[0].twilio_auth_token", 6, "a string"),
    (AGENT + 'websocket_auth = "twilio-signature"\ntwilio_auth_token = "a b"\n', "agents[0].twilio_auth_token", 6,
     "no spaces"),
    (AGENT + 'twilio_auth_tokn = "abc"\n', "agents[0].twilio_auth_tokn", 5, "did you mean 'twilio_auth_token'"),
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


def test_provider_keys_parse_with_their_defaults():
    cfg = parse_config(AGENT)
    assert cfg.relay.provider_start_timeout == 10.0 and cfg.agents[0].twilio_auth_token is None
    cfg = parse_config('[relay]\nprovider_start_timeout = 2.5\n' + AGENT
                       + 'websocket_auth = "twilio-signature"\ntwilio_auth_token = "0123456789abcdef"\n')
    assert cfg.relay.provider_start_timeout == 2.5
    assert cfg.agents[0].websocket_auth == "twilio-signature"
    assert cfg.agents[0].twilio_auth_token == "0123456789abcdef"
    require_signing_key(cfg)                      # a twilio-signature agent needs no [auth] key


def test_token_agent_without_key_is_refused_at_start():
    cfg = parse_config(AGENT + 'websocket_auth = "token"\n')
    with pytest.raises(ConfigError) as info:
        require_signing_key(cfg)
    assert "a.b" in str(info.value) and "[auth] secret" in str(info.value)
    assert (info.value.key, info.value.line) == ("agents[0].websocket_auth", 5)     # what the user wrote
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
    with pytest.raises(ConfigErrors, match="nested over 100 levels") as info:
        parse_config("\na = " + "[" * 2000 + "]" * 2000)       # refused before tomllib would recurse
    assert info.value.errors[0].line == 2
    with pytest.raises(ConfigErrors):
        parse_config('relay = 5\nagents = "x"\n')


# -- locating keys: one linear pass, whatever the shape of a valid file -------------------

def _timed_parse(text: str) -> float:
    """Seconds ``parse_config`` takes (valid or not: only the time matters here)."""
    started = time.perf_counter()
    try:
        parse_config(text)
    except ConfigErrors:
        pass
    return time.perf_counter() - started


FAKE_LINES = "".join(f'port = {i}\n[relay]\n[[agents]]\nname = "fake{i}"\nkeys = {{ k{i} = "x" }}\n'
                     for i in range(2000))

PATHOLOGICAL = {
    # A 100 KB string inside an inline table: over 60 s with the old regexes.
    "long string in an inline table": '[auth]\nkeys = { k1 = "' + "x" * 100_000 + '" }\n',
    "long literal string in an inline table": "[auth]\nkeys = { k1 = '" + "x" * 100_000 + "' }\n",
    "long line of inline keys": "[auth]\nkeys = { " + ", ".join(f'k{i} = "s"' for i in range(10_000)) + " }\n",
    "long array of URLs on one line": AGENT.replace('["ws://h"]', "[" + ", ".join(['"ws://h"'] * 200) + "]")
    + "public_keys = [" + ", ".join(['"' + "p" * 200 + '"'] * 64) + "]\n",
    "deep arrays": "[relay]\ncors_origins = " + "[" * 150 + "]" * 150 + "\n",
    "many deep arrays": "[relay]\ncors_origins = [" + ", ".join(["[[[[1], [2]]]]"] * 5_000) + "]\n",
    "thousands of tables": "".join(f'[[agents]]\nname = "a{i}"\norganization = "o"\nupstreams = ["ws://h"]\n'
                                   for i in range(5_000)),
    "multi-line strings with fake keys and tables": '[relay]\npublic_url = """' + FAKE_LINES + '"""\n'
    + "[auth]\nsecret = '''" + FAKE_LINES + "'''\n",
    "escapes and quotes": '[auth]\nsecret = "' + '\\"' * 50_000 + '"\nkeys = """' + '""x' * 50_000 + '"""\n',
    "dotted key of many parts": "[relay]\n" + ".".join(["a"] * 100_000) + " = 1\n",
    "long quoted key": '[relay]\n"' + "." * 200_000 + '" = 1\n',
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_but_valid_shapes_parse_fast(name):
    text = PATHOLOGICAL[name]
    assert _timed_parse(text) < 0.8, name          # measured here: 0.15 s at most


def test_long_string_in_inline_table_is_located():
    cfg = parse_config('[auth]\nkeys = { k1 = "' + "x" * 100_000 + '" }\n')
    assert cfg.auth.keys["k1"] == "x" * 100_000
    where = locate_keys('\n[auth]\nkeys = { k1 = "' + "x" * 100_000 + '", k2 = "" }\n')
    assert (where["auth"], where["auth.keys"], where["auth.keys.k1"], where["auth.keys.k2"]) == (2, 3, 3, 3)


def test_lines_after_multiline_strings_with_lookalike_lines():
    text = ('[relay]\npublic_url = """\nport = 1\n[auth]\n[[agents]]\n\\"""\n"""\n'        # lines 2-7
            "host = '''\nkeys = { k = 1 }\n'''\nport = \"x\"\n"                         # lines 8-11
            '[auth]\nkeys = { "k\\u0031" = "a", \'k.2\' = "b" }\nactive_key = 7\n')     # lines 12-14
    where = locate_keys(text)
    assert where["relay.public_url"] == 2 and where["relay.host"] == 8 and where["relay.port"] == 11
    assert where["auth"] == 12 and where["auth.keys.k1"] == 13 and where["auth.keys.k.2"] == 13
    assert "agents[0]" not in where and "relay.keys" not in where
    errors = _errors(text)
    assert [(e.key, e.line) for e in errors] == [("relay.port", 11), ("relay.host", 8), ("relay.public_url", 2),
                                                 ("auth.keys.k.2", 13), ("auth.active_key", 14)]


def test_locate_keys_arrays_of_tables_dotted_keys_and_elements():
    text = ('[[agents]]\nname = "a"\nupstreams = [\n  "ws://h1",   # one\n  "ws://h2",\n]\n'
            '[agents.extra]\nx.y = 1\n[[agents]]\n[[agents.sub]]\n[[agents.sub]]\n'
            'inline = [ { a = 1 }, [ "s" ], 3 ]\n'
            "'quoted key' . \"part\" = 1\n")
    where = locate_keys(text)
    assert where["agents[0]"] == 1 and where["agents[0].upstreams[0]"] == 4 and where["agents[0].upstreams[1]"] == 5
    assert where["agents[0].extra"] == 7 and where["agents[0].extra.x.y"] == 8
    assert where["agents[1]"] == 9 and where["agents[1].sub[0]"] == 10 and where["agents[1].sub[1]"] == 11
    assert where["agents[1].sub[1].inline[0].a"] == 12 and where["agents[1].sub[1].inline[1][0]"] == 12
    assert where["agents[1].sub[1].quoted key.part"] == 13


def test_error_in_a_multiline_array_names_the_elements_line():
    text = '[[agents]]\nname = "a"\norganization = "b"\nupstreams = [\n  "ws://h",\n  "http://h",\n]\n'
    assert (_only(text).key, _only(text).line) == ("agents[0].upstreams[1]", 6)


def test_agents_as_an_inline_array_are_located():
    text = 'agents = [\n  { name = "a", organization = "b", upstreams = ["ws://h"] },\n  { name = "A" },\n]\n'
    errors = _errors(text)
    assert ("agents[1].name", 3) in [(e.key, e.line) for e in errors]


# -- every value-dependent parse refuses cleanly (a ConfigError, never a traceback) ------------

HOSTILE_VALUES = [
    ('[relay]\npublic_url = "http://["\n', "relay.public_url", 2, "not a valid URL"),
    ('[relay]\npublic_url = "https://h:99999"\n', "relay.public_url", 2, "65535"),
    ('[relay]\npublic_url = "https://h:port"\n', "relay.public_url", 2, "not a valid URL"),
    ('[relay]\npublic_url = "wss://h/?a=1"\n', "relay.public_url", 2, "query"),
    ('[relay]\npublic_url = "wss://h\\nx"\n', "relay.public_url", 2, "control"),
    ('[relay]\nnonce_store = "redis"\nredis_url = "redis://["\n', "relay.redis_url", 3, "not a valid URL"),
    ('[relay]\nredis_url = "redis://h:0"\n', "relay.redis_url", 2, "65535"),
    ('[relay]\nhost = "127.0.0.1\\u0000"\n', "relay.host", 2, "address"),
    ('[relay]\ntls_cert = "a\\u0000b"\ntls_key = "k"\n', "relay.tls_cert", 2, "NUL"),
    ('[relay]\nupstream_ca_file = "\\u0000"\n', "relay.upstream_ca_file", 2, "NUL"),
    ('[relay]\ndrain_seconds = nan\n', "relay.drain_seconds", 2, "number"),
    ('[relay]\nclose_timeout = inf\n', "relay.close_timeout", 2, "number"),
    ('[relay]\nport = 1979-05-27\n', "relay.port", 2, "integer"),
    ('[[agents]]\nname = "a\\n"\norganization = "b"\nupstreams = ["ws://h"]\n', "agents[0].name", 2, "a-z"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://[::1"]\n', "agents[0].upstreams[0]", 4,
     "not a valid URL"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://h/a b"]\n', "agents[0].upstreams[0]", 4,
     "spaces"),
    ('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://h:x"]\n', "agents[0].upstreams[0]", 4,
     "not a valid URL"),
    ('[auth]\nkeys = { "k1\\n" = "a" }\n', "auth.keys.k1\n", 2, "key id"),
    ('[relay]\nport = ' + "9" * 5000 + "\n", None, 2, "digits"),
]


@pytest.mark.parametrize("text,key,line,words", HOSTILE_VALUES, ids=[h[1] or "digits" for h in HOSTILE_VALUES])
def test_hostile_values_are_config_errors(text, key, line, words):
    error = _only(text)
    assert (error.key, error.line) == (key, line)
    assert words in error.message
    assert len(error.describe()) < 400                     # values are quoted, not dumped


def test_errors_are_capped_and_say_so():
    errors = _errors("[relay]\n" + "".join(f"unknown{i} = 1\n" for i in range(5000)))
    assert len(errors) == 101 and "4900 more" in errors[-1].message


# -- defaults follow the keys the user wrote ------------------------------------------------

def test_keepalive_interval_alone_is_valid_and_its_timeout_follows():
    assert parse_config("[relay]\nkeepalive_interval = 5\n").relay.keepalive_timeout == 5
    assert parse_config("[relay]\nkeepalive_interval = 30\n").relay.keepalive_timeout == 10
    assert parse_config("[relay]\nkeepalive_interval = 30\nkeepalive_timeout = 20\n").relay.keepalive_timeout == 20
    assert parse_config("[relay]\nkeepalive_timeout = 20\n").relay.keepalive_interval == 0     # off: unused


def test_write_buffer_high_alone_is_valid_and_low_follows():
    relay = parse_config("[relay]\nwrite_buffer_high = 32768\n").relay
    assert (relay.write_buffer_high, relay.write_buffer_low) == (32768, 8192)
    relay = parse_config("[relay]\nwrite_buffer_low = 300000\n").relay
    assert (relay.write_buffer_high, relay.write_buffer_low) == (1_200_000, 300_000)
    relay = parse_config("").relay
    assert (relay.write_buffer_high, relay.write_buffer_low) == (262144, 65536)
    error = _only("[relay]\nwrite_buffer_low = 1073741824\n")
    assert (error.key, error.line) == ("relay.write_buffer_low", 2)


CROSS_KEY = [
    # Every error between two keys names one the user wrote, on its line.
    ("[relay]\nport = 9100\n", "relay.port", 2, "admin_port"),
    ("[relay]\nadmin_port = 8765\n", "relay.admin_port", 2, "differ"),
    ("[relay]\nkeepalive_interval = 5\nkeepalive_timeout = 6\n", "relay.keepalive_timeout", 3, "exceed"),
    ("[relay]\nwrite_buffer_high = 4096\nwrite_buffer_low = 4096\n", "relay.write_buffer_low", 3, "below"),
    ('[relay]\n\nnonce_store = "redis"\n', "relay.nonce_store", 3, "redis_url"),
    ('[auth]\nkeys = { a = "1", b = "2" }\n', "auth.keys", 2, "active_key"),
]


@pytest.mark.parametrize("text,key,line,words", CROSS_KEY, ids=[c[1] for c in CROSS_KEY])
def test_cross_key_errors_point_at_a_written_key(text, key, line, words):
    error = _only(text)
    assert (error.key, error.line) == (key, line) and words in error.message


def test_a_redis_nonce_store_without_its_own_url_uses_the_fleets_redis():
    cfg = parse_config('[relay]\nnonce_store = "redis"\n\n[fleet]\nredis_url = "redis://fleet:6379/0"\n')
    assert nonce_store_of(cfg) == ("redis", "redis://fleet:6379/0")
    error = _only('[relay]\nnonce_store = "redis"\n')
    assert error.key == "relay.nonce_store" and "[fleet] redis_url" in error.message


def test_shared_nonces_error_points_at_workers_or_the_token_agent():
    agent = AGENT + 'websocket_auth = "token"\n'
    cfg = parse_config('[relay]\nworkers = 2\n[auth]\nsecret = "s"\n' + agent)
    with pytest.raises(ConfigError) as info:
        require_shared_nonces(cfg)
    assert (info.value.key, info.value.line) == ("relay.workers", 2)
    cfg = apply_overrides(parse_config('[auth]\nsecret = "s"\n' + agent), workers=2)      # --workers
    with pytest.raises(ConfigError) as info:
        require_shared_nonces(cfg)
    assert (info.value.key, info.value.line) == ("agents[0].websocket_auth", 7)


def test_admin_port_override():
    cfg = apply_overrides(parse_config(FULL), port=9200, admin_port=0)
    assert (cfg.relay.port, cfg.relay.admin_port) == (9200, 0)
    assert apply_overrides(parse_config(FULL), admin_port=9300).relay.admin_port == 9300
    for bad in (-1, 65536):
        with pytest.raises(ConfigErrors, match="--admin-port") as info:
            apply_overrides(parse_config(FULL), admin_port=bad)
        assert info.value.errors[0].key == "relay.admin_port"
    with pytest.raises(ConfigErrors, match="--admin-port 8765"):
        apply_overrides(parse_config(FULL), admin_port=8765)          # the public port
    with pytest.raises(ConfigErrors, match="--port 9100"):
        apply_overrides(parse_config(FULL), port=9100)                # the admin port
    with pytest.raises(ConfigErrors, match="--host"):
        apply_overrides(parse_config(FULL), host="bad host")


# -- cors_origins -----------------------------------------------------------------------------

def test_cors_origins_valid():
    assert parse_config("").relay.cors_origins == ()
    assert parse_config('[relay]\ncors_origins = ["*"]\n').relay.cors_origins == ("*",)
    origins = ["https://app.example.com", "http://localhost:3000", "http://[::1]:8080", "https://a-b.c9.io"]
    text = "[relay]\ncors_origins = [\n" + "".join(f'  "{o}",\n' for o in origins) + "]\n"
    assert parse_config(text).relay.cors_origins == tuple(origins)


BAD_ORIGINS = [
    ("https://app.example.com/", "no path"),
    ("https://app.example.com/x", "no path"),
    ("https://app.example.com?x=1", "no path"),
    ("https://App.example.com", "lower-case host"),
    ("HTTPS://app.example.com", "lower-case scheme"),
    ("app.example.com", "lower-case scheme"),
    ("https://app.example.com:443", "default port"),
    ("http://app.example.com:80", "default port"),
    ("https://app.example.com:0", "1 to 65535"),
    ("https://app.example.com:08080", "leading zeros"),
    ("https://user@app.example.com", "user@"),
    ("https://bücher.example", "xn--"),
    ("https://a..b", "host name"),
    ("https://-a.b", "host name"),
    ("https://a b", "host name"),
    ("https://a\r\nb", "host name"),
    ("null", "scheme"),
    ("https://[::1", "IPv6"),
    ("", "scheme"),
    ("https://" + "a" * 400, "longer than"),
]


@pytest.mark.parametrize("origin,words", BAD_ORIGINS, ids=[repr(b[0])[:30] for b in BAD_ORIGINS])
def test_cors_origins_invalid_name_the_element_and_line(origin, words):
    text = '[relay]\ncors_origins = [\n  "https://ok.example",\n  ' + json.dumps(origin) + ",\n]\n"
    error = _only(text)
    assert (error.key, error.line) == ("relay.cors_origins[1]", 4) and words in error.message


@pytest.mark.parametrize("value,words", [('"*"', "list"), ('["*", "https://a.example"]', "alone"),
                                         ("[1]", "string"), ("[" + ", ".join(['"https://a.b"'] * 300) + "]", "256")])
def test_cors_origins_wrong_shapes(value, words):
    error = _only(f"[relay]\ncors_origins = {value}\n")
    assert error.key.startswith("relay.cors_origins") and error.line == 2 and words in error.message


@pytest.mark.parametrize("name,text", [
    ("a megabyte of brackets", "a = " + "[" * 1_000_000),
    ("a megabyte of inline tables", "a = " + "{b=" * 300_000),
    ("long table name, many keys", '["' + "t" * 500_000 + '"]\n' + "k = 1\n" * 80_000),
    ("long key in nested inline tables", "a = " + ("{" + "k" * 5000 + " = ") * 99 + "1" + "}" * 99),
])
def test_shapes_that_would_make_paths_quadratic(name, text):
    """Paths are not built past 1024 characters: no nesting or long name multiplies the work."""
    assert _timed_parse(text) < 0.8, name
