"""Who may act: the operator's token, a signed session cookie, and CSRF tokens.

Reading needs nothing (the dashboard binds to 127.0.0.1 unless told
otherwise; put it behind a reverse proxy with its own authentication to
share it).  Every action needs a session opened with the token, compared in
constant time, and a CSRF token bound to that session in the form; a POST
whose ``Origin`` names another site is refused as well.  Sessions are signed
with a key made at start-up, so restarting the dashboard ends them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

SESSION_COOKIE = "taskharbor_session"


class Guard:
    """Checks the token, signs sessions and derives their CSRF tokens.

    ``token`` None means no action can ever be authorised (read-only).
    """

    def __init__(self, token: str | None, *, read_only: bool = False) -> None:
        if token is not None and not token.strip():
            raise ValueError("the dashboard token must not be empty")
        self.read_only = read_only or token is None
        self._token = None if token is None else token.encode()
        self._key = secrets.token_bytes(32)

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the operator's token (constant time)."""
        if self._token is None or self.read_only:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def new_session(self) -> str:
        """A fresh session cookie value: a random nonce and its signature."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, cookie: str | None) -> str | None:
        """The session's nonce when ``cookie`` is a session this process signed."""
        if self.read_only or not cookie or "." not in cookie:
            return None
        nonce, _, signature = cookie.partition(".")
        if hmac.compare_digest(signature, self._sign("session", nonce)):
            return nonce
        return None

    def csrf_token(self, session: str) -> str:
        """The CSRF token a form of this session carries."""
        return self._sign("csrf", session)

    def check_csrf(self, session: str, given: str) -> bool:
        return hmac.compare_digest(given, self.csrf_token(session))

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's ``Origin`` header (when the browser sent one) is this site.

    ``null`` (a sandboxed frame, a privacy mode) is refused: the pages' own
    referrer policy (same-origin) makes the browser send their real origin."""
    if not origin:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
"""No inline script or style, nothing from another site: a value that slipped
through escaping still could not run."""

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
