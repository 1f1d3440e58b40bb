"""kedit's HTTP/1.1 server protocol: uvicorn's h11 protocol with the refusals and timeouts it lacks.

- A request the server cannot parse is answered with the JSON error body every other 4xx has, not
  uvicorn's plain text (the app never sees such a request: h11 refuses it before there is one).
- A request with both Content-Length and Transfer-Encoding frames its body two ways; a proxy in
  front may have read the other framing, so the bytes after the body could run as a second request
  (request smuggling). RFC 9112 §6.1: it is refused (400) and the connection closed.
"""

from __future__ import annotations

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
    """h11's server side, refusing a request whose body is framed two ways."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)
        self.refusal: str | None = None

    def next_event(self):
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name.lower() for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self.refusal = TWO_FRAMINGS
                raise h11.RemoteProtocolError(TWO_FRAMINGS, 400)
        return event


class KeditH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        size = config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self.conn = _Connection(size)

    # --- refusals -----------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": self.conn.refusal or NOT_HTTP}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
