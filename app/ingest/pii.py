"""Personal data out of customer text before it is stored, embedded or shown.

Each kind of personal data is replaced by a typed placeholder: `[EMAIL]`, `[PHONE]`, `[CARD]`,
`[IBAN]`, `[ADDRESS]`. Finding works in two steps, so that no input can make it slow:

1. Candidates come from patterns whose repetitions are all bounded (an e-mail address grows out
   of each `@` by at most 64 + 253 characters; a number run is at most 40 characters), so every
   text costs time linear in its length, whatever it holds ("a.a.a.a…", 20,000 spaces).
2. Candidates are kept only when a maintained validator accepts them: phone numbers are parsed
   by `phonenumbers` (Google's libphonenumber metadata) for the configured regions, IBANs by
   `python-stdnum` (ISO 13616 mod 97 and the country's registered length), card numbers by the
   Luhn check plus an issuer prefix and length. A reference word just before a number ("order",
   "tracking", "invoice", "IMEI", …) keeps it readable unless a phone word ("call", "tel", …)
   says otherwise, so order numbers and tracking codes survive.

Street addresses are a house number and a street type in the local order: "221B Baker Street",
"12 rue de la Paix", "Hauptstraße 12", "Calle Mayor 5", "Via Roma 10", "ul. Marszałkowska 10".
`redact_metadata` applies the same to every string inside a ticket's metadata and replaces the
whole value of keys that name personal data (`email`, `phone`, `name`, `address`, …).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

# Regions whose national formats (numbers written without +country code) are recognised; a
# number written with + or 00 is checked against its own country whatever this list holds.
PHONE_REGIONS = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "AT", "CH", "IE", "PL", "PT", "SE", "DK",
    "NO", "FI", "AU", "NZ", "CA", "IN", "JP", "BR", "MX", "ZA", "SG",
)  # fmt: skip

# The placeholders, longest match first when spans overlap.
KINDS = ("EMAIL", "IBAN", "CARD", "PHONE", "ADDRESS")


@dataclass(frozen=True)
class Span:
    """One piece of personal data: text[start:end] of `kind`."""

    start: int
    end: int
    kind: str


@dataclass
class Redaction:
    """The redacted text and how many of each kind were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


# --- e-mail -------------------------------------------------------------------------------------

_LOCAL_CHARS = frozenset("!#$%&'*+/=?^_`{|}~-.")
_DOMAIN_LABEL = re.compile(r"[^\W_](?:[\w-]{0,61}[^\W_])?")
_FILE_NAME = re.compile(r"\d+x\.(?:png|jpe?g|gif|svg|webp)$", re.IGNORECASE)


def _emails(text: str) -> Iterator[Span]:
    """Each `@` with a local part before it and a dotted domain after it (both bounded)."""
    pos = text.find("@")
    while pos != -1:
        start = pos
        while start > 0 and pos - start < 64:
            ch = text[start - 1]
            if not (ch.isalnum() or ch in _LOCAL_CHARS):
                break
            start -= 1
        while start < pos and text[start] in ".'":  # a quote or dot before the address
            start += 1
        end = _domain_end(text, pos + 1)
        domain = text[pos + 1 : end]
        if start < pos and end > pos + 1 and not _FILE_NAME.match(domain):
            yield Span(start, end, "EMAIL")
            pos = text.find("@", end)
        else:
            pos = text.find("@", pos + 1)


def _domain_end(text: str, at: int) -> int:
    """The end of a domain of 2+ labels starting at `at` whose last label is alphabetic, or `at`."""
    labels: list[tuple[int, int]] = []
    i = at
    while len(labels) < 10 and i - at < 253:
        m = _DOMAIN_LABEL.match(text, i)
        if not m:
            break
        labels.append(m.span())
        if m.end() < len(text) and text[m.end()] == "." and m.end() + 1 < len(text):
            i = m.end() + 1
        else:
            break
    while len(labels) >= 2:
        last = text[labels[-1][0] : labels[-1][1]]
        if len(last) >= 2 and last.isalpha():
            return labels[-1][1]
        labels.pop()
    return at


# --- numbers: cards, IBANs, phones --------------------------------------------------------------

# A run of digits with single separators between them, at most 40 characters.
_NUMBER_RUN = re.compile(
    r"(?<![\w+])(?<!\w[-/.])(?:\+|\b00)?\(?\d(?:[ .\-/]?\(?\)?[ ]?\d){5,30}\)?(?![\w])(?![-/.]\w)"
)
_GROUP_SPLIT = re.compile(r"[ .\-/()]+")
_EXTENSION = re.compile(r"\s?(?:ext\.?|extension|x|#)\s?\d{1,6}\b", re.IGNORECASE)
# Words that make the number right after them a reference, not personal data.
_REFERENCE = re.compile(
    r"(?:order|invoice|inv|ticket|case|claim|rma|booking|reservation|ref|reference|tracking|"
    r"track|parcel|package|shipment|consignment|awb|confirmation|conf|account|acct|member|"
    r"membership|customer|client|serial|s/?n|model|part|sku|ean|isbn|asin|imei|vat|tax|flight|"
    r"pnr|waybill|fedex|ups|usps|dhl|dpd|gls|hermes|postnl|royal mail|iban|rib|bban|bic|swift|"
    r"tariff|code|voucher|coupon|receipt|transaction|txn|id|nr|no|pedido|commande|bestellung|"
    r"auftrag|sendung|factura|fattura|rechnung|numéro|nummer|n[°º])\.?\s*(?:number|no\.?|nr\.?|n[°º]|#|"
    r"id|code)?\s*[:#]?\s*$",
    re.IGNORECASE,
)
_PHONE_WORD = re.compile(
    r"(?:call|phone|tel|telephone|mobile|cell|cellphone|whats ?app|sms|text me|ring|fax|"
    r"reach me|contact|number is|telefon|handy|téléphone|tél|portable|móvil|movil|teléfono|"
    r"telefono|cellulare|telefone|celular|telefoon|mobiel|puhelin|ligue|appelez)\b",
    re.IGNORECASE,
)
_LOCAL_7 = re.compile(r"^\d{3}[-.]\d{4}$")  # 555-1234, a local number in North America


def _before(text: str, start: int, width: int = 32) -> str:
    return text[max(0, start - width) : start]


_CARD_WORD = re.compile(
    r"(?:card|visa|mastercard|amex|discover|maestro|karte|carte|tarjeta|carta|cartão)\b",
    re.IGNORECASE,
)
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def _not_a_phone_run(run: str) -> bool:
    """Runs no phone number is written as: an IPv4 address, a dotted version with a one-digit
    part (10.0.19045), or four or more groups of exactly four digits (cards, tracking codes)."""
    if _IPV4.match(run):
        return True
    groups = re.findall(r"\d+", run)
    if "." in run and not re.search(r"[ \-/()]", run) and any(len(g) == 1 for g in groups):
        return True
    return sum(len(g) == 4 for g in groups) >= 4


def _is_reference(text: str, start: int) -> bool:
    return bool(_REFERENCE.search(_before(text, start)))


def _phone_context(text: str, start: int) -> bool:
    return bool(_PHONE_WORD.search(_before(text, start, 40)))


@lru_cache(maxsize=64)
def _iban_length(country: str) -> int | None:
    """The registered IBAN length for a country code, None when the country has no IBAN."""
    info = stdnum_iban._ibandb.info(country.upper() + "00")  # noqa: SLF001 - the registry
    bban = info[0][1].get("bban") if info and info[0][1] else None
    if not bban:
        return None
    return 4 + sum(int(n) for n in re.findall(r"(\d+)!?[nac]", bban))


_IBAN_START = re.compile(r"(?<![^\W_])[A-Za-z]{2}\d{2}(?=[ -]?[A-Za-z0-9])")


def _ibans(text: str) -> Iterator[Span]:
    """Two letters, two check digits and the country's registered length of letters/digits,
    grouped by single spaces or dashes, passing mod 97 (case as written)."""
    for m in _IBAN_START.finditer(text):
        length = _iban_length(m.group()[:2])
        if length is None:
            continue
        chars, i = 4, m.end()
        while chars < length and i < len(text):
            ch = text[i]
            if ch.isascii() and ch.isalnum():
                chars += 1
            elif ch not in " -" or i + 1 >= len(text) or not text[i + 1].isalnum():
                break
            i += 1
        if chars != length or (i < len(text) and text[i].isascii() and text[i].isalnum()):
            continue
        compact = re.sub(r"[ -]", "", text[m.start() : i]).upper()
        if _mod97(compact):
            yield Span(m.start(), i, "IBAN")


def _mod97(compact: str) -> bool:
    try:
        stdnum_iban.validate(compact, check_country=False)
    except Exception:  # noqa: BLE001 - any stdnum validation error means "not an IBAN"
        return False
    return True


def _card_ok(digits: str) -> bool:
    """13-19 digits, a payment-card issuer prefix, and the Luhn check."""
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
        return False
    two = int(digits[:2])
    issuer = (
        digits[0] == "4"
        or 51 <= two <= 55
        or 2221 <= int(digits[:4]) <= 2720
        or two in (34, 37, 36, 38, 39, 30, 35, 62, 65, 50)
        or 56 <= two <= 69
    )
    return issuer and luhn.is_valid(digits)


# A phone or card number is written in at most this many groups of digits.
MAX_GROUPS = 7


def _windows(run: str, offset: int) -> Iterator[tuple[int, int]]:
    """Start/end (in the text) of the runs of up to MAX_GROUPS digit groups that begin or end
    `run`, longest first: a number is tried with what is written right before or after it
    dropped, never every sub-run (which would cost the square of the run)."""
    groups = [(m.start(), m.end()) for m in re.finditer(r"\+?\d+", run)]
    n = len(groups)
    for size in range(min(n, MAX_GROUPS), 0, -1):
        yield offset + groups[0][0], offset + groups[size - 1][1]
        if size < n:
            yield offset + groups[n - size][0], offset + groups[-1][1]


def _phone_ok(candidate: str, *, spoken: bool) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if sum(len(g) == 1 for g in re.findall(r"\d+", candidate)) > 2:
        return False  # "1 2 3 4 5 6 7" is a list of numbers, not how anyone writes a phone
    if _LOCAL_7.match(candidate):
        return True
    if candidate.startswith(("+", "00")):
        # A leading + (or 00) is written only before phone numbers: a possible number will do.
        international = "+" + candidate[2:] if candidate.startswith("00") else candidate
        return _possible_phone(international, None)
    if any(_valid_phone(candidate, region) for region in PHONE_REGIONS):
        return True
    # Digits grouped like a phone number next to a phone word ("Tel. 0316 123456").
    return spoken and len(digits) >= 8 and any(_possible_phone(candidate, r) for r in PHONE_REGIONS)


@lru_cache(maxsize=4096)
def _valid_phone(candidate: str, region: str | None = None) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


@lru_cache(maxsize=4096)
def _possible_phone(candidate: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(number)


# Dates and times inside a run of numbers are never a phone number or card: 2026-11-03,
# 31.12.2025, 12/31/2025, 14:30.
_DATE = re.compile(
    r"(?<!\d[-./])\b(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{1,2}:\d{2})"
    r"\b(?![-./]\d)"
)
# The start of an IBAN whose check digits failed: the rest of it is no phone number.
_IBAN_LEFT = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4})*[ -]?$")


def _numbers(text: str) -> Iterator[Span]:
    """Cards and phone numbers inside each run of digits and separators."""
    for m in _NUMBER_RUN.finditer(text):
        if _IBAN_LEFT.search(_before(text, m.start(), 40)):
            continue
        reference = _is_reference(text, m.start())
        spoken = _phone_context(text, m.start())
        card_word = bool(_CARD_WORD.search(_before(text, m.start(), 40)))
        no_phone = _not_a_phone_run(m.group())
        pieces = _DATE.split(m.group())
        offset = m.start()
        for piece in pieces:
            if piece is None:
                continue
            at = text.find(piece, offset) if piece else offset
            offset = at + len(piece)
            if any(ch.isdigit() for ch in piece):
                yield from _in_run(
                    text,
                    piece,
                    at,
                    reference=reference and not card_word,
                    spoken=spoken,
                    phone=not no_phone,
                )


def _in_run(
    text: str, run: str, at: int, *, reference: bool, spoken: bool, phone: bool
) -> Iterator[Span]:
    taken: list[tuple[int, int]] = []
    for start, end in _windows(run, at):
        if any(s < end and start < e for s, e in taken):
            continue
        if text[start] != "+" and start > 0 and text[start - 1] in "+(":
            start -= 1  # keep a leading + or ( with the number
        if end < len(text) and text[end] == ")" and "(" in text[start:end]:
            end += 1
        candidate = text[start:end]
        digits = re.sub(r"\D", "", candidate)
        if _card_ok(digits):
            if not reference:
                taken.append((start, end))
                yield Span(start, end, "CARD")
        elif phone and (spoken or not reference) and _phone_ok(candidate, spoken=spoken):
            ext = _EXTENSION.match(text, end)
            end = ext.end() if ext else end
            taken.append((start, end))
            yield Span(start, end, "PHONE")


# --- street addresses ---------------------------------------------------------------------------

_EN_STREET = (
    r"street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|court|ct|place|pl|square|sq|"
    r"terrace|way|close|crescent|cres|highway|hwy|parkway|pkwy|row|view|walk|grove|gardens|"
    r"mews|hill|park|green|circle|cir|trail|trl|alley|plaza|quay|wharf|parade"
)
_NAME_WORD = r"(?:[A-Z][\w'’.-]{0,30}|\d{1,3}(?:st|nd|rd|th)|[NSEW])"
_HOUSE = r"\d{1,5}[A-Za-z]?(?:\s?bis)?"
_ADDRESSES = [
    # 221B Baker Street, 350 5th Ave, 1600 Pennsylvania Avenue NW, 10 Downing St.
    rf"\b{_HOUSE}(?:\s+{_NAME_WORD}){{1,4}}\s+(?i:{_EN_STREET})\b\.?(?:\s+(?:NW|NE|SW|SE|[NSEW])\b)?",
    # 12 rue de la Paix, 8 bis boulevard Voltaire (French, house number first)
    rf"\b{_HOUSE},?\s+(?i:rue|avenue|av\.|boulevard|bd|place|impasse|allée|allee|chemin|quai|"
    rf"cours|route|square)(?:\s+[\w'’-]{{1,30}}){{1,4}}?(?=\s*(?:[,;.)]|\d{{4,5}}\b|$))",
    # Hauptstraße 12, Bahnhofstrasse 15, Keizersgracht 123, Storgatan 5, Berliner Str. 5a
    r"\b[A-ZÄÖÜÅÆØ][\wäöüßåæø-]{1,40}(?i:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|"
    r"ufer|chaussee|steig|straat|gracht|laan|plein|kade|singel|dijk|gatan|vägen|gade|vej|"
    r"veien|gata)\s+\d{1,4}[a-z]?\b",
    r"\b[A-ZÄÖÜ][\wäöüß-]{1,30}\s+(?:Straße|Strasse|Str\.|Weg|Gasse|Platz|Allee|Ring|Damm)\s+"
    r"\d{1,4}[a-z]?\b",
    # Calle Mayor 5, C/ Alcalá 23, Avda. de la Constitución 14, Via Roma 10, Rua Augusta 25,
    # ul. Marszałkowska 10 (street type first, house number after the name)
    r"(?<!\w)(?:Calle|C/|Avda\.|Avenida|Av\.|Paseo|Plaza|Pza\.|Carrer|Camino|Ronda|Via|Viale|"
    r"Piazza|Corso|Largo|Vicolo|Rua|Travessa|Praça|Largo|ul\.|ulica|al\.|aleja|Calea|Strada|"
    r"Rue|Avenue)\s+(?:[\w'’.-]{1,30}\s+){1,4}?\d{1,4}[A-Za-z]?\b",
]
_ADDRESS = re.compile("|".join(f"(?:{p})" for p in _ADDRESSES))


def _addresses(text: str) -> Iterator[Span]:
    for m in _ADDRESS.finditer(text):
        yield Span(m.start(), m.end(), "ADDRESS")


# --- all together -------------------------------------------------------------------------------


def find(text: str) -> list[Span]:
    """Every piece of personal data in `text`, in order, without overlaps (earlier kinds in
    KINDS win a tie, then the longer span)."""
    found: list[Span] = [*_emails(text), *_ibans(text), *_numbers(text), *_addresses(text)]
    found.sort(key=lambda s: (s.start, -(s.end - s.start), KINDS.index(s.kind)))
    kept: list[Span] = []
    for span in found:
        if kept and span.start < kept[-1].end:
            prev = kept[-1]
            if (span.end - span.start) > (prev.end - prev.start) and KINDS.index(
                span.kind
            ) <= KINDS.index(prev.kind):
                kept[-1] = span
            continue
        kept.append(span)
    return kept


def redact(text: str) -> Redaction:
    """Replace personal data in `text` with typed placeholders."""
    if not text:
        return Redaction(text, {})
    spans = find(text)
    if not spans:
        return Redaction(text, {})
    counts: dict[str, int] = {}
    parts: list[str] = []
    last = 0
    for span in spans:
        parts.append(text[last : span.start])
        parts.append(f"[{span.kind}]")
        counts[span.kind] = counts.get(span.kind, 0) + 1
        last = span.end
    parts.append(text[last:])
    return Redaction("".join(parts), counts)


# Metadata keys whose whole value is personal data, whatever it looks like: contact details
# under any prefix (customer_email, requesterPhone), and a person's name ("name", "first_name",
# "customer_name"; not "group_name" or "product_name").
_PERSONAL_KEY = re.compile(
    r"(?:^|_)(?:e_?mail|e_?mail_address|(?:phone|mobile|cell|tel|telephone|fax)(?:_number)?|"
    r"address|street|street_address|postcode|postal_code|zip|zip_code|ip|ip_address|iban|"
    r"card_number|ssn|birthday|birth_date|date_of_birth|dob)s?$"
    r"|^(?:(?:customer|requester|user|contact|author|sender|from|reporter|submitter|client|"
    r"person|display|full|first|last|given|family|middle|sur)_)?name$|^surname$",
)
PERSONAL_VALUE = "[REDACTED]"


def personal_key(key: str) -> bool:
    """True when a metadata key names personal data (`customer_email`, `phone`, `name`, …)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).replace("-", "_").replace(" ", "_")
    return bool(_PERSONAL_KEY.search(snake.lower()))


def redact_metadata(value: Any) -> Any:
    """A copy of JSON `value` with personal keys' values replaced and strings redacted."""
    if isinstance(value, dict):
        return {
            k: (_blank(v) if personal_key(str(k)) else redact_metadata(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_metadata(v) for v in value]
    if isinstance(value, str):
        # A bare run of digits in metadata is an id far more often than a phone number.
        return value if value.isdigit() else redact(value).text
    return value


def _blank(value: Any) -> Any:
    """Personal data under a personal key: strings and numbers become the placeholder,
    containers keep their shape (so a list of phone numbers stays a list)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return {k: _blank(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return PERSONAL_VALUE
