"""Real labelled messages for the analysis branch, and the dev split nobody trains on.

The datasets live beside the project (`../shared/datasets/`); only ids and labels are kept in
`fixtures/uxcx/`. Which messages are in the dev split depends on brand, airline and
conversation only (`dev_group`), so near-duplicates from one brand or one conversation never
straddle the split, and adding labels never moves a message from one side to the other.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# One brand in four is held out whole (sha256 of "brand:<handle>" mod 4 == 0).
DEV_MOD = 4
# The airlines of airline_tweets held out whole; Southwest is also a dev brand of
# support_tweets (SouthwestAir), so the brand sits on one side in both datasets.
DEV_AIRLINES = frozenset({"Southwest", "Virgin America"})
# Spotify's support account holds three quarters of support_tweets: it is split by author (one
# author's whole thread on one side), not held out whole.
SPLIT_BY_AUTHOR = frozenset({"SpotifyCares"})


def _bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % DEV_MOD


@dataclass(frozen=True, slots=True)
class RealMessage:
    """One real customer message of a dataset, with what the split needs to know."""

    source: str  # support_tweets | airline_tweets
    id: str
    text: str
    brand: str  # the brand's handle or the airline; "" when unknown
    author: str  # the author's id where the dataset has it
    root: str  # the conversation's first message still in the dataset
    context: str  # the message this one answers, when the dataset has it
    sentiment: str = ""  # airline_tweets' crowd label
    reason: str = ""  # airline_tweets' negative reason

    @property
    def key(self) -> str:
        return f"{self.source}:{self.id}"


def dev_group(message: RealMessage) -> str:
    """The group a message is held out with: its airline, brand, author or conversation."""
    if message.source == "airline_tweets":
        return f"airline:{message.brand}"
    if message.brand and message.brand not in SPLIT_BY_AUTHOR:
        return f"brand:{message.brand}"
    if message.author:
        return f"author:{message.author}"
    return f"conversation:{message.root}"


def is_dev(message: RealMessage) -> bool:
    """Whether a message belongs to the dev split (never trained on, never used to select)."""
    group = dev_group(message)
    if group.startswith("airline:"):
        return message.brand in DEV_AIRLINES
    return _bucket(group) == 0


def _threads(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return {row["tweet_id"]: row for row in csv.DictReader(f)}


def read_support_tweets(datasets: Path) -> Iterator[RealMessage]:
    """support_tweets/inbound.csv, with authors, roots and context from support_threads."""
    threads_path = datasets / "support_threads" / "messages.csv"
    threads = _threads(threads_path) if threads_path.exists() else {}

    def root_of(tweet_id: str) -> str:
        seen = {tweet_id}
        current = tweet_id
        while True:
            parent = threads.get(current, {}).get("in_response_to_tweet_id", "")
            if not parent or parent not in threads or parent in seen:
                return current
            seen.add(parent)
            current = parent

    with (datasets / "support_tweets" / "inbound.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            tweet_id = row["tweet_id"]
            thread = threads.get(tweet_id, {})
            parent = threads.get(thread.get("in_response_to_tweet_id", ""), {})
            yield RealMessage(
                source="support_tweets",
                id=tweet_id,
                text=row["text"],
                brand=row.get("company", "") or "",
                author=thread.get("author_id", ""),
                root=root_of(tweet_id),
                context=parent.get("text", ""),
            )


def read_airline_tweets(datasets: Path) -> Iterator[RealMessage]:
    """airline_tweets/train.csv (each tweet its own conversation)."""
    with (datasets / "airline_tweets" / "train.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            yield RealMessage(
                source="airline_tweets",
                id=row["tweet_id"],
                text=row["text"],
                brand=row["airline"],
                author="",
                root=row["tweet_id"],
                context="",
                sentiment=row["sentiment"],
                reason=row.get("negativereason", "") or "",
            )


def read_real_messages(datasets: Path) -> dict[str, RealMessage]:
    """Every message of the datasets that exist under `datasets`, by `source:id`."""
    out: dict[str, RealMessage] = {}
    if (datasets / "support_tweets" / "inbound.csv").exists():
        out.update((m.key, m) for m in read_support_tweets(datasets))
    if (datasets / "airline_tweets" / "train.csv").exists():
        out.update((m.key, m) for m in read_airline_tweets(datasets))
    return out


# ---------------------------------------------------------------------------------------------
# Labels kept by id under fixtures/uxcx/, and labels derived from the datasets' own categories.

LABEL_KEYS = ("source", "id", "label", "subcategory", "clarity")
SOURCES = ("support_tweets", "airline_tweets")


@dataclass(frozen=True, slots=True)
class RealLabel:
    """A person's reading of one real message (by id): label, sub-category, how clear."""

    source: str
    id: str
    label: str  # UX, CX, none or skip
    subcategory: str
    clarity: str

    @property
    def key(self) -> str:
        return f"{self.source}:{self.id}"


def read_real_labels(path: Path) -> dict[str, RealLabel]:
    """`source,id,label,subcategory,clarity` rows, checked; raises ValueError naming the line."""
    from app.nlp.base import SUBCATEGORIES

    out: dict[str, RealLabel] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in LABEL_KEYS[:4] if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: columns {', '.join(missing)} missing")
        for n, row in enumerate(reader, 2):
            where = f"{path}:{n}"
            if row["source"] not in SOURCES:
                raise ValueError(f"{where}: source {row['source']!r} is not one of {SOURCES}")
            label, sub = row["label"], row.get("subcategory") or ""
            if label != "skip":
                if label not in SUBCATEGORIES:
                    raise ValueError(f"{where}: label {label!r} is not UX, CX, none or skip")
                if sub not in SUBCATEGORIES[label]:
                    raise ValueError(f"{where}: sub-category {sub!r} is not one of {label}'s")
            item = RealLabel(row["source"], row["id"], label, sub, row.get("clarity") or "clear")
            if item.key in out:
                raise ValueError(f"{where}: {item.key} labelled twice")
            out[item.key] = item
    return out


def read_v1_tweet_labels(path: Path) -> dict[str, RealLabel]:
    """The first labeller's 530 support tweets (`tweet_id,label,subcategory`)."""
    out: dict[str, RealLabel] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            item = RealLabel(
                "support_tweets", row["tweet_id"], row["label"], row["subcategory"], ""
            )
            out[item.key] = item
    return out


# airline_tweets' reasons for negative tweets, read against examples: the ones that name the
# service map to a CX sub-category; "Flight Booking Problems" and "Bad Flight" are often the
# website or the in-flight product (UX) and "Customer Service Issue" names no sub-category, so
# they teach only what they say. "Can't Tell" teaches nothing.
AIRLINE_REASONS: dict[str, tuple[str | None, str | None]] = {
    "Late Flight": ("CX", "travel_disruption"),
    "Cancelled Flight": ("CX", "travel_disruption"),
    "Lost Luggage": ("CX", "delivery"),
    "Damaged Luggage": ("CX", "delivery"),
    "Flight Attendant Complaints": ("CX", "staff"),
    "longlines": ("CX", "staff"),
    "Customer Service Issue": ("CX", None),
    "Flight Booking Problems": (None, None),
    "Bad Flight": (None, None),
}


def airline_weak_label(message: RealMessage) -> tuple[int, str | None, str | None]:
    """(problem, label, sub-category) from the crowd's sentiment and reason: problem is 1, 0 or
    -1 (unknown); label and sub-category None when the reason does not say."""
    if message.sentiment == "positive":
        return 0, "none", None
    if message.sentiment == "negative" and message.reason in AIRLINE_REASONS:
        label, sub = AIRLINE_REASONS[message.reason]
        return 1, label, sub
    return -1, None, None


# CLAP's categories are all about the app itself (UX); OTHER with 4-5 stars is praise, while
# OTHER with a low rating mixes complaints and chatter and teaches nothing.
CLAP_CATEGORIES: dict[str, tuple[str, str | None]] = {
    "BUG": ("UX", "bug"),
    "PERFORMANCE": ("UX", "performance"),
    "ENERGY": ("UX", "performance"),
    "USABILITY": ("UX", "usability"),
    "FEATURE": ("UX", "feature_request"),
    "SECURITY": ("UX", None),
}


@dataclass(frozen=True, slots=True)
class Review:
    """One app review of `app_reviews/clap.csv` with the label its category gives."""

    id: str
    app: str
    text: str
    label: str
    subcategory: str | None


def read_clap(datasets: Path) -> list[Review]:
    """The CLAP reviews whose category says UX or none (see CLAP_CATEGORIES)."""
    path = datasets / "app_reviews" / "clap.csv"
    if not path.exists():
        return []
    out: list[Review] = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if not text:
                continue
            if row["label"] in CLAP_CATEGORIES:
                label, sub = CLAP_CATEGORIES[row["label"]]
            elif row["label"] == "OTHER" and row.get("rating") in ("4", "5"):
                label, sub = "none", "praise"
            else:
                continue
            out.append(Review(row["id"], row["app"], text, label, sub))
    return out
