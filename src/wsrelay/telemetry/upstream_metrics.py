"""/metrics for the upstream pools: instances per agent and state, connect failures, ejections.

Read from the balancer (core/balancer.py) when scraped, like the frame counters: the
connect path only updates plain integers. Label values are bounded by the agents known.
"""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..core.balancer import Balancer


class UpstreamCollector:
    """``wsrelay_upstream_instances``, ``wsrelay_upstream_connect_failures_total``,
    ``wsrelay_upstream_ejections_total``, per agent."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self):
        instances = GaugeMetricFamily("wsrelay_upstream_instances",
                                      "Bot instances per agent: healthy, or ejected after failing to connect",
                                      labels=["agent", "organization", "state"])
        failures = CounterMetricFamily("wsrelay_upstream_connect_failures",
                                       "Connects to a bot instance that failed", labels=["agent", "organization"])
        ejections = CounterMetricFamily("wsrelay_upstream_ejections",
                                        "Bot instances ejected for a while (passive health check)",
                                        labels=["agent", "organization"])
        now = time.monotonic()
        for host, (healthy, ejected) in sorted(self.balancer.states(now).items()):
            agent, _, organization = host.rpartition(".")
            instances.add_metric([agent, organization, "healthy"], healthy)
            instances.add_metric([agent, organization, "ejected"], ejected)
            pool = self.balancer.pools[host]
            failures.add_metric([agent, organization], pool.connect_failures)
            ejections.add_metric([agent, organization], pool.ejections)
        yield instances
        yield failures
        yield ejections
