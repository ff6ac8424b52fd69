"""Personal data out of customer text before it is stored, embedded or shown.

Each kind of personal data is replaced by a typed placeholder: `[EMAIL]`, `[PHONE]`, `[CARD]`,
`[IBAN]`, `[ADDRESS]`. Card numbers must pass the Luhn check and IBANs the ISO 7064 mod-97
check, so order numbers and tracking codes stay readable; phone numbers need 7-15 digits in a
phone-like shape; street addresses are a house number followed by words ending in a street type
("221B Baker Street", "12 rue de la Paix" is left alone: English street types only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EMAIL = re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally in groups separated by spaces or dashes.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w)"
)
_STREET_TYPES = (
    "street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|court|ct|place|pl|square|sq|"
    "terrace|way|close|crescent|highway|hwy|parkway|pkwy"
)
# Capitalised words between the number and the street type, so "3 days to close" is no address.
ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?(?:\s+[A-Z][a-zA-Z'-]+){{1,4}}\s+(?i:{_STREET_TYPES})\b\.?"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616 check digits (mod 97 == 1)."""
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


@dataclass
class Redaction:
    """The redacted text and how many of each kind were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


def redact(text: str) -> Redaction:
    """Replace personal data in `text` with typed placeholders."""
    counts: dict[str, int] = {}

    def sub(pattern: re.Pattern[str], tag: str, keep: object = None) -> None:
        nonlocal text

        def repl(m: re.Match[str]) -> str:
            if keep is not None and not keep(m.group(0)):  # type: ignore[operator]
                return m.group(0)
            counts[tag] = counts.get(tag, 0) + 1
            return f"[{tag}]"

        text = pattern.sub(repl, text)

    sub(EMAIL, "EMAIL")
    sub(IBAN, "IBAN", iban_ok)
    sub(CARD, "CARD", lambda s: luhn_ok(re.sub(r"\D", "", s)))
    sub(ADDRESS, "ADDRESS")
    sub(PHONE, "PHONE", lambda s: 7 <= len(re.sub(r"\D", "", s)) <= 15 and _phone_like(s))
    return Redaction(text, counts)


def _phone_like(s: str) -> bool:
    """A number written like a phone number: a leading +, brackets, or separated groups."""
    digits = re.sub(r"\D", "", s)
    if s.startswith("+") or "(" in s:
        return True
    if digits.startswith("0") and 10 <= len(digits) <= 11:  # a national number, unspaced
        return True
    groups = re.split(r"[\s.-]", s.strip())
    return len(groups) >= 2 and len(digits) >= 9
