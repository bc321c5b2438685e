"""TLS contexts: serving ``wss://`` to clients, and verifying ``wss://`` upstreams."""

from __future__ import annotations

import ssl

from ..config import RelayConfig
from ..errors import ConfigError


def server_tls_context(cfg: RelayConfig) -> ssl.SSLContext | None:
    """The context for the public listener when ``tls_cert`` and ``tls_key`` are set."""
    if not cfg.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate/key ({exc}); check that both files "
                          "exist, are PEM, and that the key matches the certificate",
                          key="relay.tls_cert") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def upstream_tls_context(cfg: RelayConfig) -> ssl.SSLContext:
    """The context for ``wss://`` upstreams: system CAs, or ``upstream_ca_file``.

    ``upstream_tls_verify = false`` turns verification off, for testing only.
    """
    try:
        context = ssl.create_default_context(cafile=cfg.upstream_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the upstream CA file ({exc})",
                          key="relay.upstream_ca_file") from exc
    if not cfg.upstream_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
