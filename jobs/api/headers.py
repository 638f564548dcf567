"""Security headers on every response, errors and 413s included, and a last-resort 500.

Outermost of our middlewares, so whatever answers (a route, an error handler, the body limit)
passes through here. Strict-Transport-Security only when the request came over TLS: sent over
plain HTTP it would be ignored anyway, and it must not pin a host that has no certificate.
An exception no handler caught becomes the usual JSON 500 here, with the same headers (Starlette
would otherwise answer it outside every user middleware).
"""

from __future__ import annotations

import structlog

from jobs.api.errors import error_response

log = structlog.get_logger()

# The API answers JSON and the status page uses only inline CSS: nothing else may load or frame.
CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Swagger UI (only with `serve --docs`) loads its script and CSS from jsdelivr.
DOCS_CSP = ("default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'unsafe-inline' https://cdn.jsdelivr.net; img-src https://fastapi.tiangolo.com data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")
COMMON = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
          (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]
HSTS = (b"strict-transport-security", b"max-age=31536000")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect")


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = [*COMMON, (b"content-security-policy", (DOCS_CSP if scope["path"] in DOCS_PATHS else CSP).encode())]
        if scope.get("scheme") == "https":
            extra.append(HSTS)
        names = {name for name, _ in extra}
        started = False

        async def with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception as exc:
            log.exception("api.unexpected_error", error=repr(exc))
            if started:
                raise
            await error_response(500, "internal error; see the service log")(scope, receive, with_headers)
