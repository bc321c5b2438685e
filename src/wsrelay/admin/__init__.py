"""The admin port: probes, /metrics, /sessions and the dashboard (loopback by default)."""
