"""Checks on the texts a client sends, shared by every endpoint that takes one."""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidInput, PayloadTooLarge

# The largest id a table holds (a 32-bit INTEGER on both databases): larger ids are refused as
# invalid (422) instead of overflowing the database driver.
MAX_ID = 2_147_483_647
MAX_OFFSET = 10_000_000
# A text query parameter may not carry NUL, which PostgreSQL text cannot hold.
NO_NUL = r"^[^\x00]*$"
# What an endpoint that takes a JSON body and an id may answer besides success.
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such resource."}}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Body is not UTF-8 JSON."},
    404: {"description": "No such resource."},
    413: {"description": "Request or a text is over its limit."},
    415: {"description": "Content-Type is not JSON."},
    422: {"description": "A field is missing, of the wrong type, or not acceptable."},
}


def required_text(value: str, *, what: str, limit: int) -> str:
    """`value` stripped; 422 when empty, 413 when over `limit` characters."""
    text = value.strip()
    if not text:
        raise InvalidInput(f"{what} is empty; send the message text.", code="empty_text")
    return _within(text, what=what, limit=limit)


def optional_text(value: str | None, *, what: str, limit: int) -> str | None:
    """`value` stripped, None when absent or blank; 413 when over `limit` characters."""
    text = (value or "").strip()
    return _within(text, what=what, limit=limit) if text else None


def _within(text: str, *, what: str, limit: int) -> str:
    if len(text) > limit:
        raise PayloadTooLarge(
            f"{what} has {len(text)} characters; the limit is {limit}.", code="text_too_large"
        )
    return text
