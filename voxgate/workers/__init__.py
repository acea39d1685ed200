"""Shared worker runtime: handed-off sockets, WebSocket handshakes, relay engines."""
