"""Beyond one relay: the shared Redis link, the fleet's agents, leases and nonces in Redis,
and the ``wsrelay agents`` command."""
