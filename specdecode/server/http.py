"""The HTTP server around the app: uvicorn with bounded connections and a deadline for request headers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("specdecode.server")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request line and headers have not all
    arrived `header_timeout` seconds after it opened or after its previous response. Without it a
    client sending a byte a second holds a connection for ever (uvicorn's keep-alive timer stops at
    the first byte)."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            log.info("closed a connection from %s: no request headers in %gs", self.client, self.header_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting_for_headers():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_headers() and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only listens on this machine."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def serve(app, host: str, port: int, max_connections: int, header_timeout: float) -> None:
    """Run `app` until interrupted: at most `max_connections` open connections (more are answered
    503), headers due within `header_timeout` seconds."""
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
    uvicorn.run(app, host=host, port=port, log_level="info", http=protocol, limit_concurrency=max_connections)
