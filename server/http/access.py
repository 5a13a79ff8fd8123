"""Who may see the status page: the admin API's rule, applied to the HTTP port.

The page and ``/api/status`` show what the gRPC admin Status shows, so they follow its
rule (``warpserve.server.grpc.admin``): on a loopback ``--http-address`` they are open,
unless an admin token is set; on any other address they need the token, and without
one they are not served. The token is the admin API's (``--admin-token-file`` or
``WARPSERVE_ADMIN_TOKEN``), sent one of three ways:

- ``Authorization: Bearer <token>``, as ``warpserve models`` sends it over gRPC (curl);
- ``/?token=<token>`` or the page's own form: the answer sets a cookie and redirects to
  ``/``, so the token leaves the address bar, and the browser sends the cookie after;
- that cookie. It holds an HMAC of the token, not the token: it opens the page only,
  not the admin API that can change what is served.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from warpserve.server.errors import PermissionDenied, Unauthenticated
from warpserve.server.grpc.admin import admin_exposure
from warpserve.server.grpc.admin_auth import TOKEN_ENV, token_matches
from warpserve.server.options import ServerOptions

COOKIE = "warpserve_status"
QUERY = "token"
_COOKIE_PURPOSE = b"warpserve status page"


@dataclass(frozen=True)
class PageAccess:
    address: str  # --http-address
    token: str | None
    https: bool

    @classmethod
    def of(cls, options: ServerOptions) -> PageAccess:
        return cls(options.http_address, options.admin_token, options.http_tls is not None)

    @property
    def served(self) -> bool:
        return admin_exposure(self.address, self.token)

    def off_message(self) -> str:
        return (
            f"the status page is not served: --http-address {self.address} is not loopback "
            f"and no admin token is set; to see it, start the server with {TOKEN_ENV} or "
            "--admin-token-file (then open /?token=<token>), or bind --http-address 127.0.0.1"
        )

    def check(self, request: web.BaseRequest) -> None:
        """Raises Unauthenticated (no credentials) or PermissionDenied (wrong ones, or
        the page is off on this address)."""
        if not self.served:
            raise PermissionDenied(self.off_message())
        if self.token is None:
            return
        header = request.headers.get("Authorization")
        if header is not None:
            if not token_matches(self.token, (("authorization", header),)):
                raise PermissionDenied(
                    f"the bearer token does not match the server's admin token ({TOKEN_ENV} "
                    "or --admin-token-file)"
                )
            return
        cookie = request.cookies.get(COOKIE)
        if cookie is None:
            raise Unauthenticated(
                "the status page needs the admin token: open /?token=<token> in the "
                "browser, or send 'Authorization: Bearer <token>'"
            )
        if not hmac.compare_digest(cookie.encode(), self.cookie_value().encode()):
            raise PermissionDenied(
                "the status page's cookie is not valid for this server's admin token; "
                "open /?token=<token> again"
            )

    def matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def cookie_value(self) -> str:
        assert self.token is not None, "no cookie without a token"
        return hmac.new(self.token.encode(), _COOKIE_PURPOSE, hashlib.sha256).hexdigest()

    def signed_in(self, location: str) -> web.Response:
        """A redirect to ``location`` that sets the page's cookie."""
        response = web.Response(status=303, headers={"Location": location})
        response.set_cookie(
            COOKIE,
            self.cookie_value(),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.https,
        )
        response.headers["Cache-Control"] = "no-store"
        return response
