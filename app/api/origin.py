"""Who may change state, and which Host names the served process answers.

Cross-site requests: whatever the API-key setting, a POST/PUT/PATCH/DELETE that a browser sends
from another site is refused (403): with no key set, a page anywhere could otherwise revert an
edit or submit one through the visitor's browser. A browser says where a request comes from
(Sec-Fetch-Site, or at least Origin on a POST); a request with neither is not a browser's (curl,
the openai client, scripts) and passes. The dashboard's forms are only ever posted from kedit's own
pages, so they need a browser's word that they are (Sec-Fetch-Site: same-origin, or an Origin
equal to the server's own).

Host names (DNS rebinding): a page on a name the attacker controls, re-pointed at 127.0.0.1,
reaches a loopback server with its own name in Host. The served process answers only the Host
names in KEDIT_ALLOWED_HOSTS; the default, when bound to loopback, is localhost, 127.0.0.1 and
[::1] at the bound port (app/config.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlsplit

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _netloc(origin: str) -> str | None:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


def cross_site_problem(
    method: str, path: str, headers: Mapping[str, str], allowed_origins: list[str] | tuple = ()
) -> str | None:
    """Why this request may not change anything, or None. `headers`: lower-case names."""
    if method.upper() not in UNSAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site", "").strip().lower()
    origin = headers.get("origin", "").strip()
    host = headers.get("host", "").strip().lower()
    own = bool(origin) and _netloc(origin) is not None and _netloc(origin) == host
    listed = bool(origin) and origin.rstrip("/").lower() in {o.rstrip("/").lower() for o in allowed_origins}
    if origin and not (own or listed):
        return (
            f"a request that changes something was sent from another origin ({origin[:100]}); kedit "
            "accepts those only from its own pages, from clients that are not browsers, or from an "
            "origin listed in KEDIT_ALLOWED_ORIGINS"
        )
    if site and site not in ("same-origin", "none") and not listed:
        return (
            f"a request that changes something was sent by a browser from another site (Sec-Fetch-Site: "
            f"{site[:40]}); kedit accepts those only from its own pages or from an origin listed in "
            "KEDIT_ALLOWED_ORIGINS"
        )
    if path.startswith("/ui/") and not (site == "same-origin" or (not site and own)):
        return (
            "this form may only be posted from kedit's own pages (the browser said neither "
            "Sec-Fetch-Site: same-origin nor an Origin of this server); reload the page and send it again"
        )
    return None


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    """`allowed`: names (any port) or name:port, lower case; '*' allows any."""
    if "*" in allowed:
        return True
    host = (host or "").strip().lower()
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") and ":" in host else host
    return host in allowed or name in allowed


class HostGuard:
    """ASGI middleware: requests whose Host is not allowed get 400 with the reason."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, [a.strip().lower() for a in allowed]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.allowed:
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(b"host", b"")
        host = raw.decode("latin-1")
        if host_allowed(host, self.allowed):
            return await self.app(scope, receive, send)
        body = json.dumps(
            {
                "detail": f"this server does not answer to the name {host[:100]!r} (Host header); use one of "
                f"{', '.join(self.allowed)}, or add it to KEDIT_ALLOWED_HOSTS"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
