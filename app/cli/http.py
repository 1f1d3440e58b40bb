"""kedit's HTTP/1.1 server protocol: uvicorn's h11 protocol with the refusals and timeouts it lacks.

- A request the server cannot parse is answered with the JSON error body every other 4xx has, not
  uvicorn's plain text (the app never sees such a request: h11 refuses it before there is one).
- A request with both Content-Length and Transfer-Encoding frames its body two ways; a proxy in
  front may have read the other framing, so the bytes after the body could run as a second request
  (request smuggling). RFC 9112 §6.1: it is refused (400) and the connection closed.
- A connection must deliver a complete request head within the idle timeout of being opened or
  of its previous answer, else it is closed: uvicorn times out only keep-alive connections that
  have been answered once, so a connection that never sends a request (or sends its head a byte
  at a time) would be held open for ever.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

NOT_HTTP = (
    "the request is not valid HTTP/1.1 and could not be read (e.g. a Content-Length that is not one "
    "decimal number of bytes, or a malformed header line); fix the request and send it again"
)
TWO_FRAMINGS = (
    "the request has both Content-Length and Transfer-Encoding, which frame its body two ways "
    "(RFC 9112 section 6.1); send only one of them. The connection is closed"
)


class _Connection(h11.Connection):
    """h11's server side, refusing a request whose body is framed two ways, and telling the
    protocol when a request head has arrived (so that its head timeout stops)."""

    def __init__(self, max_incomplete_event_size: int, on_request) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)
        self.refusal: str | None = None
        self._on_request = on_request

    def next_event(self):
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name.lower() for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self.refusal = TWO_FRAMINGS
                raise h11.RemoteProtocolError(TWO_FRAMINGS, 400)
            self._on_request()
        return event


class KeditH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        size = config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self._framing = _Connection(size, self._head_arrived)
        self.conn = self._framing
        self._head_timer: asyncio.TimerHandle | None = None

    # --- the request-head timeout -------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._head_arrived()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timed_out)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        # Armed before uvicorn starts the next cycle, which may read a pipelined request at once.
        if not self.transport.is_closing():
            self._arm_head_timer()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    # --- refusals -----------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": self._framing.refusal or NOT_HTTP}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
