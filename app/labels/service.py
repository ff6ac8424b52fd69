"""Store and remove human corrections of the UX/CX label."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

from app.core.db import begin_write, utcnow
from app.core.errors import InvalidInput, NotFound
from app.core.limits import optional_text, required_text
from app.labels.models import TicketLabel
from app.labels.schemas import LabelUpdate
from app.nlp.base import SUBCATEGORIES
from app.tickets.models import Ticket

MAX_NOTE_CHARS = 2_000


def check(update: LabelUpdate) -> tuple[str, str | None, str, str | None]:
    """(label, subcategory, author, note), or a 4xx that says what to fix."""
    label = update.label.value
    subcategory = (update.subcategory or "").strip() or None
    if subcategory is not None and subcategory not in SUBCATEGORIES[label]:
        raise InvalidInput(
            f"subcategory {subcategory!r} is not one of {label}'s: "
            + ", ".join(SUBCATEGORIES[label]),
            code="unknown_subcategory",
        )
    author = required_text(update.author, what="author", limit=255)
    note = optional_text(update.note, what="note", limit=MAX_NOTE_CHARS)
    return label, subcategory, author, note


def set_override(
    session: Session,
    *,
    parent: type[SQLModel],
    override: type[Any],
    key: str,
    key_value: int,
    what: str,
    update: LabelUpdate,
) -> None:
    """Create or replace a person's label row `override` (keyed by `key`) for the `parent`
    row with that id (a ticket or a cluster)."""
    label, subcategory, author, note = check(update)
    for attempt in range(2):
        try:
            begin_write(session)
            if session.get(parent, key_value) is None:
                raise NotFound(f"No {what} with id {key_value}.")
            row = session.get(override, key_value)
            now = utcnow()
            if row is None:
                row = override(**{key: key_value}, created_at=now, label=label, author=author)
            row.label, row.subcategory, row.author, row.note = label, subcategory, author, note
            row.updated_at = now
            session.add(row)
            session.commit()
            return
        except IntegrityError:  # two first corrections at once: the second one updates
            session.rollback()
            if attempt:
                raise
        except Exception:
            session.rollback()
            raise


def clear_override(
    session: Session, *, parent: type[SQLModel], override: type[Any], key_value: int, what: str
) -> None:
    """Remove a person's label: the model's label counts again."""
    begin_write(session)
    try:
        if session.get(parent, key_value) is None:
            raise NotFound(f"No {what} with id {key_value}.")
        row = session.get(override, key_value)
        if row is not None:
            session.delete(row)
        session.commit()
    except Exception:
        session.rollback()
        raise


def set_ticket_label(session: Session, *, ticket_id: int, update: LabelUpdate) -> None:
    """Create or replace the correction of one ticket."""
    set_override(
        session, parent=Ticket, override=TicketLabel, key="ticket_id", key_value=ticket_id,
        what="ticket", update=update,
    )  # fmt: skip


def clear_ticket_label(session: Session, *, ticket_id: int) -> None:
    """Remove a ticket's correction: the model's label counts again."""
    clear_override(session, parent=Ticket, override=TicketLabel, key_value=ticket_id, what="ticket")
