"""Domain errors and the handlers that turn every failure into `{"code", "message"}` JSON."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("app.errors")


class AppError(Exception):
    """An error a client can act on: a stable `code`, a human `message`, an HTTP status."""

    status_code = 400
    code = "bad_request"

    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details


class InvalidInput(AppError):
    """The request is well-formed JSON but its content is not acceptable."""

    status_code = 422
    code = "invalid_input"


class MalformedBody(AppError):
    """The request body is not valid UTF-8 JSON."""

    status_code = 400
    code = "invalid_json"


class PayloadTooLarge(AppError):
    """The request, or one text inside it, is over a size limit."""

    status_code = 413
    code = "payload_too_large"


class Unauthorized(AppError):
    """No credentials, or credentials that do not check out (API key, webhook signature)."""

    status_code = 401
    code = "unauthorized"


class NotFound(AppError):
    """The addressed resource does not exist."""

    status_code = 404
    code = "not_found"


class NotReady(AppError):
    """A dependency of the service (database, artifacts) is unavailable."""

    status_code = 503
    code = "not_ready"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON shape of every error response."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors reduced to `{"field", "message"}` pairs a client can read."""
    out = []
    for err in errors:
        out.append({"field": _loc(err.get("loc", ())), "message": err.get("msg", "invalid")})
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that map every exception to the JSON error shape."""

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                error_body("invalid_json", "The request body is not valid JSON."), status_code=400
            )
        details = validation_details(errors)
        first = details[0] if details else {"field": "", "message": "invalid"}
        message = f"Invalid request: {first['field']}: {first['message']}"
        return JSONResponse(error_body("validation_error", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot hold (a NUL character, an integer out of range) that got
        # past validation: the client's data, so a 422, never a 500.
        log.warning(
            "value refused by the database",
            extra={"stage": "api", "path": request.url.path, "error": type(exc.orig).__name__},
        )
        return JSONResponse(
            error_body(
                "invalid_value",
                "A value in the request cannot be stored or searched (for example a NUL "
                "character or a number out of range); remove it and retry.",
            ),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"stage": "api", "path": request.url.path})
        return JSONResponse(
            error_body("internal_error", "Something went wrong on our side; it was logged."),
            status_code=500,
        )
