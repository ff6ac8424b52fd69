"""Reading JSON request bodies ourselves: size limit, strict UTF-8, clear errors, raw bytes kept."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from app.core.errors import (
    AppError,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    validation_details,
)

# Schemas referenced from request bodies documented by `json_body_openapi`, merged into the
# OpenAPI document's components by app.main.
OPENAPI_SCHEMAS: dict[str, Any] = {}


class UnsupportedMediaType(AppError):
    """The body is not declared as JSON."""

    status_code = 415
    code = "unsupported_media_type"


@dataclass(frozen=True, slots=True)
class RawBody:
    """The body as received, and its declared content type."""

    data: bytes
    content_type: str | None


async def read_body(request: Request, *, max_bytes: int) -> RawBody:
    """Read the body, refusing anything over `max_bytes` before and while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"The request body is {int(declared)} bytes; the limit is {max_bytes}."
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The request body is over the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return RawBody(data=b"".join(chunks), content_type=request.headers.get("content-type"))


def reject_constant(name: str) -> Any:
    """`parse_constant` for json.loads: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_json(value: Any) -> Any:
    """Drop NUL characters and lone surrogates, which no database column can store."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # U+FFFD, not "?": a text keeps a visible mark, and an id holding one is refused
            # (two different broken ids must not become the same "?" id).
            value = _LONE_SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    return value


def parse_json(raw: RawBody) -> Any:
    """Decode the body as UTF-8 JSON, or raise a 4xx that says what is wrong with it."""
    ctype = (raw.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {ctype!r} is not supported; send 'Content-Type: application/json'."
        )
    if not raw.data.strip():
        raise MalformedBody("The request body is empty; send a JSON document.", code="empty_body")
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(
            f"The request body is not valid UTF-8 (bad byte at offset {exc.start}).",
            code="invalid_utf8",
        ) from exc
    try:
        return clean_json(json.loads(text, parse_constant=reject_constant))
    except json.JSONDecodeError as exc:
        raise MalformedBody(
            f"The request body is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})."
        ) from exc
    except ValueError as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise MalformedBody("The request body is nested too deeply.") from exc


def validate(adapter: TypeAdapter[Any], data: Any) -> Any:
    """Validate parsed JSON against a schema; errors name each bad field."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        details = validation_details(exc.errors(include_url=False))[:50]
        first = details[0]
        where = f"{first['field']}: " if first["field"] else ""
        raise InvalidInput(
            f"Invalid request: {where}{first['message']}", code="validation_error", details=details
        ) from exc


def validate_items(one: TypeAdapter[Any], many: TypeAdapter[Any], data: Any) -> list[Any]:
    """One object or an array of them, validated against the shape the client sent, so errors
    name `0.field` for an array and `field` for an object (not both union branches)."""
    parsed = validate(many if isinstance(data, list) else one, data)
    return list(parsed) if isinstance(parsed, list) else [parsed]


def json_body_openapi(adapter: TypeAdapter[Any] | None, *, description: str = "") -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body that the route reads itself (None: any object)."""
    if adapter is None:
        schema: dict[str, Any] = {"type": "object"}
    else:
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        OPENAPI_SCHEMAS.update(schema.pop("$defs", {}))
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }
