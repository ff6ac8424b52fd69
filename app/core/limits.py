"""Checks on the texts a client sends, shared by every endpoint that takes one."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
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


# How deep a JSON value (metadata) may nest: real helpdesk metadata is a few levels; past a few
# hundred, serialisers (pydantic's limit is 255) cannot write it back out.
MAX_JSON_DEPTH = 32
# Unicode categories that show nothing: format characters (zero-width space, joiners, BOM,
# bidi marks), controls, unassigned code points, surrogates and private use.
_INVISIBLE = frozenset({"Cf", "Cc", "Cn", "Cs", "Co"})


def visible(text: str) -> bool:
    """True when `text` holds at least one character a reader can see."""
    return any(not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE for ch in text)


def required_text(value: str, *, what: str, limit: int) -> str:
    """`value` stripped; 422 when empty or invisible, 413 when over `limit` characters."""
    text = value.strip()
    if not text:
        raise InvalidInput(f"{what} is empty; send the message text.", code="empty_text")
    text = _within(text, what=what, limit=limit)
    if not visible(text):
        raise InvalidInput(
            f"{what} holds only invisible characters (zero-width spaces, joiners, controls); "
            "send the message text.",
            code="empty_text",
        )
    return text


def json_depth_over(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `value` nests objects/arrays more than `limit` levels (checked without
    recursion, so any depth the JSON parser accepted is safe to check)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterator[Any]
        if isinstance(node, dict):
            children = iter(node.values())
        elif isinstance(node, list):
            children = iter(node)
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def clip_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> Any:
    """`value` with anything nested past `limit` levels replaced by the string "[too deep]":
    for rows stored before the depth limit, so they can still be served and sent."""
    if not json_depth_over(value, limit):
        return value

    def clip(node: Any, depth: int) -> Any:
        if isinstance(node, dict | list) and depth > limit:
            return "[too deep]"
        if isinstance(node, dict):
            return {k: clip(v, depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [clip(v, depth + 1) for v in node]
        return node

    return clip(value, 1)


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
