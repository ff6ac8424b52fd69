"""Personal data is redacted before anything is stored, embedded or shown."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.enrich.worker import Worker
from app.ingest.pii import iban_ok, luhn_ok, redact


@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        ("Mail jane.doe+help@example.co.uk today", "Mail [EMAIL] today", {"EMAIL": 1}),
        ("Call +44 20 7946 0958 or (555) 123-4567", "Call [PHONE] or [PHONE]", {"PHONE": 2}),
        ("my number is 07700900123", "my number is [PHONE]", {"PHONE": 1}),
        ("card 4111 1111 1111 1111 charged twice", "card [CARD] charged twice", {"CARD": 1}),
        ("card 4111-1111-1111-1111", "card [CARD]", {"CARD": 1}),
        ("refund to GB82 WEST 1234 5698 7654 32 pls", "refund to [IBAN] pls", {"IBAN": 1}),
        ("I live at 221B Baker Street, London", "I live at [ADDRESS], London", {"ADDRESS": 1}),
        ("deliver to 12 Elm Road please", "deliver to [ADDRESS] please", {"ADDRESS": 1}),
    ],
)
def test_each_kind_is_redacted(text: str, expected: str, counts: dict[str, int]) -> None:
    r = redact(text)
    assert (r.text, r.counts) == (expected, counts)


@pytest.mark.parametrize(
    "text",
    [
        "order #482913 is late",
        "Order 1234567890123 arrived late",  # 13 digits, fails the Luhn check
        "tracking 1Z999AA10123456784",
        "It took 3 hours and 45 minutes on version 2.3.4",
        "error code 0x80070005 again",
        "GB82 is not an IBAN",
        "It took 3 days to close my account",
        "2 weeks later the way it works changed",
    ],
)
def test_ordinary_numbers_stay(text: str) -> None:
    assert redact(text).text == text


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB83WEST12345698765432")


def test_stored_ticket_and_its_analysis_never_carry_personal_data(
    client: TestClient, worker: Worker
) -> None:
    item = {
        "source": "api",
        "external_id": "pii-1",
        "subject": "Refund to jane@example.com",
        "body": "Please refund card 4111 1111 1111 1111. Call me on +1 (555) 123-4567.",
    }
    tid = client.post("/v1/tickets", json=item).json()["data"][0]["id"]
    worker.drain()
    t = client.get(f"/v1/tickets/{tid}").json()
    assert t["subject"] == "Refund to [EMAIL]"
    assert t["body"] == "Please refund card [CARD]. Call me on [PHONE]."
    for e in t["analysis"]["uxcx"]["evidence"]:
        assert "@" not in e["text"] and "4111" not in e["text"]
    # The same delivery again is a repeat, not an update (the stored text is the redacted one).
    again = client.post("/v1/tickets", json=item).json()["data"][0]
    assert again["result"] == "unchanged"
