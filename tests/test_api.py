"""The public API at the package root (docs/tokens.md, "From Python"): load a config, mint a token.

What users script is ``wsrelay.load_config``, ``wsrelay.parse_config`` and ``wsrelay.mint_token``
(and the names they return or raise); ``import wsrelay`` must stay cheap, loading the rest on use.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time

import pytest

import wsrelay
from wsrelay.core.tokens import verify_token

CONFIG = """
[auth]
secret = "a-long-random-string"
token_ttl = 300

[[agents]]
name = "my-agent"
organization = "my-org"
upstreams = ["ws://10.0.0.5:7860/ws"]
websocket_auth = "token"
"""


def test_all_names_the_public_api_and_each_resolves():
    assert sorted(wsrelay.__all__) == ["Config", "ConfigError", "ConfigErrors", "TokenError", "__version__",
                                       "load_config", "mint_token", "parse_config"]
    for name in wsrelay.__all__:
        assert getattr(wsrelay, name) is not None
    assert set(wsrelay.__all__) <= set(dir(wsrelay))
    with pytest.raises(AttributeError):
        wsrelay.no_such_name  # noqa: B018


def test_the_api_is_typed():
    for function in (wsrelay.load_config, wsrelay.parse_config, wsrelay.mint_token):
        signature = inspect.signature(function)
        assert signature.return_annotation is not inspect.Signature.empty, function.__name__
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), \
            function.__name__


def test_import_wsrelay_loads_nothing_else():
    code = ("import sys; before = set(sys.modules); import wsrelay; "
            "print(sorted(m for m in set(sys.modules) - before if m != 'wsrelay'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_load_config_and_mint_token_give_a_token_the_relay_accepts(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG)
    config = wsrelay.load_config(path, environ={})
    assert isinstance(config, wsrelay.Config)
    token = wsrelay.mint_token(config, "my-agent.my-org", ttl=60, session_id="6f1c0000-0000-4000-8000-000000000000")
    claims = verify_token(token, service_host="my-agent.my-org", keys=config.auth.keys, now=time.time(), leeway=0)
    assert claims.session_id == "6f1c0000-0000-4000-8000-000000000000"
    assert 0 < claims.exp - time.time() <= 61
    assert wsrelay.load_config(str(path), environ={}) == config          # a str path as well


def test_secrets_from_the_environment_replace_the_files_as_for_the_relay(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG)
    config = wsrelay.load_config(path, environ={"WSRELAY_AUTH_SECRET": "from-the-environment"})
    token = wsrelay.mint_token(config, "my-agent.my-org")
    verify_token(token, service_host="my-agent.my-org", keys={"env": "from-the-environment"},
                 now=time.time(), leeway=0)
    assert wsrelay.parse_config(CONFIG, environ={"WSRELAY_AUTH_SECRET": "x" * 20}).auth.keys == {"env": "x" * 20}
    assert wsrelay.parse_config(CONFIG, environ={}).auth.keys != {"env": "x" * 20}


def test_errors_are_the_public_exceptions(tmp_path):
    with pytest.raises(wsrelay.ConfigErrors) as caught:
        wsrelay.parse_config("[relay]\nprot = 8765\n", source="relay.toml", environ={})
    assert isinstance(caught.value, wsrelay.ConfigError)
    assert "did you mean 'port'" in str(caught.value)
    with pytest.raises(wsrelay.ConfigErrors):
        wsrelay.load_config(tmp_path / "missing.toml")
    config = wsrelay.parse_config(CONFIG, environ={})
    with pytest.raises(wsrelay.TokenError, match="no agent 'other.my-org'"):
        wsrelay.mint_token(config, "other.my-org")
    keyless = wsrelay.parse_config(CONFIG.replace('secret = "a-long-random-string"\n', ""), environ={})
    with pytest.raises(wsrelay.TokenError, match="no signing key"):
        wsrelay.mint_token(keyless, "my-agent.my-org")
