"""Every error is a JSON body: {"error": {"message": ..., "fields": [{"path", "message"}]}}.

Manifest field paths are given as the user wrote them, under `manifest.` (e.g.
`manifest.input.uri`), so a client can point at the exact line of its request.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.manifest.errors import format_loc

log = structlog.get_logger()


class ApiError(Exception):
    def __init__(self, status: int, message: str, fields: list[tuple[str, str]] | None = None,
                 headers: dict | None = None):
        self.status, self.message, self.fields, self.headers = status, message, fields or [], headers
        super().__init__(message)

    def __reduce__(self):  # pickled like every exception of ours: rebuild from the same arguments
        return (type(self), (self.status, self.message, self.fields, self.headers))


def error_response(status: int, message: str, fields=(), headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "fields": [{"path": p, "message": m} for p, m in fields]}}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.fields, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        fields = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            where = loc[0] if loc and loc[0] in ("body", "query", "path", "header") else None
            path = format_loc(loc[1:] if where else loc)
            if where and where != "body":
                path = f"{where}.{path}" if path else where
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "unknown field"
            fields.append((path, msg))
        return error_response(422, "request is not valid", fields)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception):
        log.exception("api.unexpected_error", error=repr(exc))
        return error_response(500, "internal error; see the service log")
