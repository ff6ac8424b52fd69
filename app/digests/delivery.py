"""Deliver a stored digest to Slack (incoming webhook, Block Kit) and e-mail (SMTP), with retries.

Each channel's outcome is recorded on the digest row (`delivery`):

    {"slack": {"status": "delivered"|"pending"|"failed", "attempts": 2, "error": None,
               "at": "2026-11-23T08:00:03+00:00", "next_attempt_at": None}, "email": {...}}

A failed send stays "pending" with `next_attempt_at` = now + core.retry.backoff (doubling from
DIGEST_RETRY_BACKOFF_S, capped at a day, +-20% jitter) and is picked up by `retry_due` (the
worker calls it through the schedule); after DIGEST_MAX_ATTEMPTS it is "failed" for good, until
`deliver` is called for it again. A stored digest whose message cannot be built is "failed" at
once, with the reason: no retry would change it. One digest or channel that raises never stops
the others in `retry_due`.
"""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.core import retry
from app.core.config import Settings
from app.core.db import begin_write, utcnow
from app.core.errors import InvalidInput, NotFound
from app.digests.models import StoredDigest
from app.digests.render import growth_text, pct, render_text
from app.digests.schemas import Digest, DigestCluster

log = logging.getLogger("app.digests")

CHANNELS = ("slack", "email")
SEND_TIMEOUT_S = 10.0
# Keeps a large DIGEST_MAX_ATTEMPTS from pushing the next try past any useful horizon.
MAX_BACKOFF_S = 86_400.0
# How long a claimed channel is left to the worker sending it before others may retry it.
SEND_LEASE_S = 300.0
SLACK_ITEMS = 5
USER_AGENT = "IssueLens-Digest/0.1"


class DeliveryError(Exception):
    """A channel refused or could not be reached; `reason` is short enough to store."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:500]


# ---- Slack ----------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Escape the three characters Slack reserves for its own markup (&, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _scope(digest: Digest) -> str:
    return f" · team {digest.team}" if digest.team else ""


def _cluster_line(c: DigestCluster) -> str:
    title = slack_escape((c.title or "untitled")[:150])
    return (
        f"• *{title}* · {slack_escape(c.label)} · {slack_escape(c.team)} · "
        f"{c.count} this week · {growth_text(c)}"
    )


def _clusters_block(heading: str, clusters: list[DigestCluster], empty: str) -> dict[str, Any]:
    lines = [_cluster_line(c) for c in clusters[:SLACK_ITEMS]] or [f"_{empty}_"]
    text = f"*{heading}*\n" + "\n".join(lines)
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def slack_message(digest: Digest, link: str) -> dict[str, Any]:
    """A Slack Block Kit message for the digest; `link` is the full digest's URL."""
    h = digest.headline
    header = f"Weekly issues digest {digest.week}{_scope(digest)}"
    numbers = (
        f"*{h.messages}* messages ({pct(h.change, signed=True)} vs {h.previous_messages} the "
        f"week before) · *{pct(h.negative_share)}* negative\n"
        f"UX {pct(h.ux_share)} · CX {pct(h.cx_share)} · no problem {pct(h.none_share)} · "
        f"{len(digest.rising)} rising, {len(digest.new)} new"
    )
    blocks: list[dict[str, Any]] = [
        # plain_text is shown as is: Slack parses no markup (and no entities) there.
        {"type": "header", "text": {"type": "plain_text", "text": header[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": numbers}},
        {"type": "divider"},
        _clusters_block("Rising", digest.rising, "Nothing is growing past its 4-week mean."),
        _clusters_block("New", digest.new, "No new recurring issue."),
        _clusters_block("Top issues by volume", digest.top, "No clustered messages this week."),
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{digest.start:%d %b %Y} to {digest.end:%d %b %Y} (UTC) · "
                    f"generated {digest.generated_at:%Y-%m-%d %H:%M} UTC by IssueLens",
                }
            ],
        },
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Read the full digest"},
                    "url": link,
                    "action_id": "open_digest",
                }
            ],
        },
    ]
    fallback = (
        f"{slack_escape(header)}: {h.messages} messages ({pct(h.change, signed=True)}), "
        f"{pct(h.negative_share)} negative. Read the full digest: <{link}>"
    )
    return {"text": fallback, "blocks": blocks}


def send_slack(url: str, payload: dict[str, Any], timeout: float) -> None:
    """POST the message to a Slack incoming webhook; DeliveryError unless Slack answers 2xx."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        # Slack says why in a short body: invalid_payload, no_service, channel_is_archived...
        detail = exc.read(200).decode("utf-8", "replace").strip()
        raise DeliveryError(f"HTTP {exc.code}" + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: an answer that is not HTTP (BadStatusLine, too many headers...).
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(exc).__name__}: {reason}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")


# ---- e-mail ---------------------------------------------------------------------------------


def recipients(settings: Settings) -> list[str]:
    """DIGEST_EMAIL_TO as a list of addresses."""
    return [a.strip() for a in settings.digest_email_to.split(",") if a.strip()]


def send_email(settings: Settings, *, subject: str, html: str, text: str) -> None:
    """Send one multipart/alternative message (text, then HTML) over SMTP; DeliveryError if not."""
    to = recipients(settings)
    if not to:
        raise DeliveryError("DIGEST_EMAIL_TO is empty")
    sender = settings.digest_email_from
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SEND_TIMEOUT_S) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password)
            refused = smtp.send_message(message, to_addrs=to)
    except smtplib.SMTPResponseException as exc:
        said = exc.smtp_error
        said = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        raise DeliveryError(f"SMTP {exc.smtp_code}: {said}".strip()) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"all recipients refused: {', '.join(exc.recipients)}") from None
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if refused:
        # The others have it already; retrying would send them a second copy.
        log.warning(
            "digest e-mail refused for some recipients",
            extra={"stage": "digest", "channel": "email", "refused": sorted(refused)},
        )


# ---- delivery state -------------------------------------------------------------------------


def configured_channels(settings: Settings) -> list[str]:
    """The channels with a destination set."""
    out = []
    if settings.digest_slack_webhook_url.strip():
        out.append("slack")
    if recipients(settings):
        out.append("email")
    return out


def digest_url(settings: Settings, digest_id: int) -> str:
    """Where the full digest is read: DIGEST_LINK_BASE/digests/{id}."""
    return f"{settings.digest_link_base.rstrip('/')}/digests/{digest_id}"


def retry_delay(attempts: int, settings: Settings) -> float:
    """Seconds before the next try after `attempts` failures: core.retry.backoff from
    DIGEST_RETRY_BACKOFF_S, capped at a day."""
    return retry.backoff(attempts, settings.digest_retry_backoff_s, MAX_BACKOFF_S)


def _subject(digest: Digest) -> str:
    return f"Weekly issues digest {digest.week}{_scope(digest)}"


def _prepare(channel: str, row: StoredDigest, settings: Settings) -> Callable[[], None]:
    """The channel's send, its message built from the stored digest (raises if it cannot be)."""
    digest = Digest.model_validate(row.payload)
    url = digest_url(settings, row.id or 0)
    if channel == "slack":
        target, message = settings.digest_slack_webhook_url.strip(), slack_message(digest, url)
        return lambda: send_slack(target, message, SEND_TIMEOUT_S)
    subject, html = _subject(digest), row.html
    text = render_text(digest) + f"\nRead the full digest: {url}\n"
    return lambda: send_email(settings, subject=subject, html=html, text=text)


def _attempt(channel: str, row: StoredDigest, settings: Settings) -> tuple[str | None, bool]:
    """Send one channel: (the error or None, whether a retry could change the outcome)."""
    extra = {"stage": "digest", "digest": row.id, "channel": channel}
    try:
        send = _prepare(channel, row, settings)
    except Exception as exc:  # noqa: BLE001 - a stored digest that never renders stops here
        log.error("digest message could not be built", exc_info=True, extra=extra)
        return f"message could not be built: {type(exc).__name__}: {exc}"[:500], False
    try:
        send()
    except DeliveryError as exc:
        return exc.reason, True
    except Exception as exc:  # noqa: BLE001 - counted as a failed attempt, retried with backoff
        log.warning("digest send raised", exc_info=True, extra=extra)
        return f"{type(exc).__name__}: {exc}"[:500], True
    return None, True


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _is_due(entry: dict[str, Any] | None, due_at: datetime) -> bool:
    if not entry or entry.get("status") != "pending" or not entry.get("next_attempt_at"):
        return False
    return _aware(datetime.fromisoformat(entry["next_attempt_at"])) <= _aware(due_at)


def _locked(session: Session, digest_id: int) -> StoredDigest:
    # A short write transaction: BEGIN IMMEDIATE on SQLite, the row locked on PostgreSQL, so
    # two workers never claim the same channel or overwrite each other's channel entries.
    begin_write(session)
    stmt = select(StoredDigest).where(col(StoredDigest.id) == digest_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.exec(stmt).first()
    if row is None:
        raise NotFound(f"No digest with id {digest_id}.")
    return row


def _record(session: Session, row: StoredDigest, channel: str, entry: dict[str, Any]) -> None:
    # A new dict, so the JSON column is seen as changed.
    row.delivery = {**(row.delivery or {}), channel: entry}
    session.add(row)
    session.commit()


def _claim(
    engine: Engine, digest_id: int, channel: str, *, due_at: datetime | None, now: datetime
) -> int | None:
    """Take one channel for sending; its attempts so far, or None when there is nothing to do.

    The claim pushes next_attempt_at out by SEND_LEASE_S, so no other worker's retry picks the
    channel while it is sent (no lock is held over the network); after a crash mid-send it is
    simply due again when the lease runs out."""
    with Session(engine, expire_on_commit=False) as session:
        row = _locked(session, digest_id)
        entry = dict((row.delivery or {}).get(channel) or {})
        if entry.get("status") == "delivered" or (
            due_at is not None and not _is_due(entry, due_at)
        ):
            session.rollback()
            return None
        # A channel that had failed for good starts a fresh round when asked again.
        attempts = 0 if entry.get("status") == "failed" else int(entry.get("attempts") or 0)
        lease = now + timedelta(seconds=SEND_LEASE_S)
        claimed = {
            "status": "pending",
            "attempts": attempts,
            "error": entry.get("error"),
            "at": entry.get("at"),
            "next_attempt_at": lease.isoformat(),
        }
        _record(session, row, channel, claimed)
        return attempts


def _deliver_channel(
    engine: Engine,
    digest_id: int,
    channel: str,
    settings: Settings,
    *,
    due_at: datetime | None,
    now: datetime | None,
) -> None:
    now = _aware(now) if now is not None else utcnow()
    attempts = _claim(engine, digest_id, channel, due_at=due_at, now=now)
    if attempts is None:
        return
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(StoredDigest, digest_id)
        if row is None:
            raise NotFound(f"No digest with id {digest_id}.")
    # The session is closed: no transaction stays open while the channel is sent.
    error, retryable = _attempt(channel, row, settings)
    if retryable:
        attempts += 1
    entry: dict[str, Any] = {
        "status": "delivered",
        "attempts": attempts,
        "error": None,
        "at": now.isoformat(),
        "next_attempt_at": None,
    }
    extra = {"stage": "digest", "digest": digest_id, "channel": channel, "attempts": attempts}
    if error is not None and (not retryable or attempts >= settings.digest_max_attempts):
        entry.update(status="failed", error=error)
        log.warning(
            "digest delivery to %s failed for good: %s",
            channel,
            error,
            extra={**extra, "error": error},
        )
    elif error is not None:
        wait = retry_delay(attempts, settings)
        entry.update(
            status="pending",
            error=error,
            next_attempt_at=(now + timedelta(seconds=wait)).isoformat(),
        )
        log.info(
            "digest delivery will be retried",
            extra={**extra, "error": error, "retry_in_s": wait},
        )
    else:
        log.info("digest delivered", extra=extra)
    with Session(engine, expire_on_commit=False) as session:
        _record(session, _locked(session, digest_id), channel, entry)


def _current(engine: Engine, digest_id: int) -> dict[str, Any]:
    with Session(engine) as session:
        row = session.get(StoredDigest, digest_id)
        if row is None:
            raise NotFound(f"No digest with id {digest_id}.")
        return dict(row.delivery or {})


def _targets(settings: Settings, channels: Iterable[str] | None) -> list[str]:
    wanted = list(channels) if channels is not None else list(CHANNELS)
    unknown = [c for c in wanted if c not in CHANNELS]
    if unknown:
        raise InvalidInput(
            f"unknown digest channel(s) {', '.join(unknown)}; channels: {', '.join(CHANNELS)}.",
            code="unknown_channel",
        )
    configured = configured_channels(settings)
    return [c for c in CHANNELS if c in wanted and c in configured]


def deliver(
    engine: Engine,
    digest_id: int,
    settings: Settings,
    *,
    channels: Iterable[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Send the digest now to every configured channel (or those named) not yet delivered.

    Each outcome is committed on the row as it happens (`now`, default the clock, stamps it);
    returns the row's `delivery`."""
    targets = _targets(settings, channels)
    _current(engine, digest_id)  # NotFound before anything is sent
    for channel in targets:
        _deliver_channel(engine, digest_id, channel, settings, due_at=None, now=now)
    return _current(engine, digest_id)


def retry_due(engine: Engine, settings: Settings, now: datetime) -> dict[int, dict[str, Any]]:
    """Send every configured channel whose retry is due by `now`; returns id -> `delivery`."""
    configured = configured_channels(settings)
    if not configured:
        return {}
    now = _aware(now)
    with Session(engine) as session:
        # Only two small columns; a deployment keeps about one digest per week and team.
        rows = session.exec(select(StoredDigest.id, StoredDigest.delivery)).all()
    due = {
        digest_id: [c for c in configured if _is_due((delivery or {}).get(c), now)]
        for digest_id, delivery in rows
        if digest_id is not None
    }
    out: dict[int, dict[str, Any]] = {}
    for digest_id, chans in sorted(due.items()):
        if not chans:
            continue
        for channel in chans:
            try:
                _deliver_channel(engine, digest_id, channel, settings, due_at=now, now=now)
            except Exception:  # noqa: BLE001 - one digest or channel must not stop the others
                # Claimed but not recorded (the database, or the row gone): due again when
                # the claim's lease runs out.
                log.exception(
                    "digest retry error",
                    extra={"stage": "digest", "digest": digest_id, "channel": channel},
                )
        try:
            out[digest_id] = _current(engine, digest_id)
        except NotFound:
            continue
    return out
