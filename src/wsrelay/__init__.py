"""wsrelay: a self-hostable WebSocket relay for real-time voice and data bots."""

__version__ = "0.1.0"
