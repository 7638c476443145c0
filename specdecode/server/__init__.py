"""`specdecode serve`: an OpenAI-compatible HTTP server with speculative decoding."""

from specdecode.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
