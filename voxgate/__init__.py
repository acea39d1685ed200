"""voxgate: a WebSocket gateway for realtime voice AI."""

__version__ = "0.1.0"
