"""Checks on the texts a client sends, shared by every endpoint that takes one."""

from __future__ import annotations

from app.core.errors import InvalidInput, PayloadTooLarge


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
