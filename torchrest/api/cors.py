"""CORS: which browser origins may call the API (`--cors-origins`; off by default).

A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin, for a method
the route has, is answered 204 with what the browser needs; from any other origin, 403 without CORS
headers, so the browser refuses the call. Answers to allowed origins carry Access-Control-Allow-Origin.
With `*` every origin is allowed and credentials never are; with a list, the origin is echoed and
credentials (the Authorization header) are allowed.
"""

from __future__ import annotations

from collections.abc import Iterable

from torchrest.api.http import Response
from torchrest.errors import Forbidden

ALLOWED_HEADERS = (
    "authorization, content-type, x-api-key, x-request-id, x-request-timeout-ms, inference-header-content-length"
)
EXPOSED_HEADERS = "x-request-id, inference-header-content-length, retry-after, server-timing"
MAX_AGE_S = 600


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = {origin.rstrip("/") for origin in origins}
        self.any_origin = "*" in self.origins

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/") in self.origins

    def preflight(self, origin: str, method: str, route_methods: Iterable[str] | None) -> Response:
        """The answer to a preflight; Forbidden for an origin or method that is not allowed."""
        methods = sorted(route_methods or ())
        if not self.allows(origin):
            raise Forbidden(f"origin {origin!r} may not call this API (see --cors-origins)")
        if method.upper() not in methods:
            raise Forbidden(f"{method!r} is not allowed here (allowed: {', '.join(methods) or 'none'})")
        headers = {
            **self.headers(origin),
            "access-control-allow-methods": ", ".join(methods),
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": str(MAX_AGE_S),
        }
        return Response(204, b"", headers=headers)

    def headers(self, origin: str) -> dict[str, str]:
        """What an answer to `origin` carries: nothing unless the origin is allowed."""
        if not self.allows(origin):
            return {}
        if self.any_origin:
            return {"access-control-allow-origin": "*", "access-control-expose-headers": EXPOSED_HEADERS}
        return {
            "access-control-allow-origin": origin,
            "access-control-allow-credentials": "true",
            "access-control-expose-headers": EXPOSED_HEADERS,
            "vary": "Origin",
        }
