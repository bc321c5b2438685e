"""Secrets from the environment over the file: WSRELAY_AUTH_SECRET, WSRELAY_FLEET_REDIS_URL,
WSRELAY_ADMIN_TOKEN."""

from __future__ import annotations

import pytest

from wsrelay.config import admin_token_from_env, fleet_redis_url_from_env, parse_config, secrets_from_env
from wsrelay.errors import ConfigError

FILE = '[fleet]\nredis_url = "redis://127.0.0.1:6379/0"\n\n[auth]\nsecret = "from-the-file"\n'


def test_the_environment_replaces_the_files_redis_url_and_secret():
    cfg = secrets_from_env(parse_config(FILE), {"WSRELAY_FLEET_REDIS_URL": "rediss://u:p%40ss@redis:6380/1",
                                                "WSRELAY_AUTH_SECRET": "from-the-env"})
    assert cfg.fleet.redis_url == "rediss://u:p%40ss@redis:6380/1"
    assert cfg.auth.keys == {"env": "from-the-env"}


def test_without_the_variables_the_file_stands():
    cfg = secrets_from_env(parse_config(FILE), {})
    assert cfg.fleet.redis_url == "redis://127.0.0.1:6379/0" and cfg.auth.keys != {"env": "from-the-env"}


def test_the_variable_alone_puts_a_relay_in_a_fleet():
    cfg = fleet_redis_url_from_env(parse_config("[relay]\nport = 8765\n"), {"WSRELAY_FLEET_REDIS_URL": "redis://r:6379"})
    assert cfg.fleet.enabled and cfg.fleet.redis_url == "redis://r:6379"


@pytest.mark.parametrize("url", ["http://redis:6379", "redis", "redis://a b", "redis://x\n",
                                 # the file's rule: redis:// or rediss:// with a host and a valid port
                                 "unix:///run/redis.sock", "redis://[", "redis://:p%40ss@redis:99999/0"])
def test_a_bad_url_in_the_environment_names_the_variable(url):
    with pytest.raises(ConfigError) as info:
        fleet_redis_url_from_env(parse_config(FILE), {"WSRELAY_FLEET_REDIS_URL": url})
    assert info.value.key == "WSRELAY_FLEET_REDIS_URL" and "redis://" in str(info.value)
    assert "p%40ss" not in str(info.value)


def test_the_admin_token_comes_from_the_environment_over_the_file():
    file = '[relay]\nadmin_token = "from-the-file-0123456789"\n'
    token = "from-the-env-0123456789abcdef"
    assert secrets_from_env(parse_config(file), {"WSRELAY_ADMIN_TOKEN": token}).relay.admin_token == token
    assert secrets_from_env(parse_config(file), {}).relay.admin_token == "from-the-file-0123456789"


@pytest.mark.parametrize("token", ["short", "has a space in it, long enough", "x" * 513])
def test_a_bad_admin_token_in_the_environment_names_the_variable(token):
    with pytest.raises(ConfigError) as info:
        admin_token_from_env(parse_config("[relay]\nport = 8765\n"), {"WSRELAY_ADMIN_TOKEN": token})
    assert info.value.key == "WSRELAY_ADMIN_TOKEN" and "16 to 512" in str(info.value)
    assert token not in str(info.value)
