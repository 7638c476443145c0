"""`specdecode serve`: an OpenAI-compatible HTTP server with speculative decoding."""

from specdecode.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # imported on use: the server's libraries are an optional extra
        from specdecode.server.app import create_app

        return create_app
    raise AttributeError(f"module 'specdecode.server' has no attribute {name!r}")
