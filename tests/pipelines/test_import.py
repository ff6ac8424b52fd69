"""python -m pipelines import: CSV/JSONL files stored through the real ingest code."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text, update
from sqlmodel import Session, select

from app.core.config import Settings
from app.ingest.service import author_hash
from app.tickets.models import Ticket
from pipelines.__main__ import main
from pipelines.import_file import ImportInterrupted, run_import
from tests.helpers import count_rows

TWEET_MAP = {
    "id": "tweet_id",
    "text": "body",
    "author": "handle",
    "created_at": "posted",
    "url": "link",
    "rating": "stars",
}


def _tickets(engine: Engine) -> dict[str, Ticket]:
    with Session(engine) as s:
        return {t.external_id: t for t in s.exec(select(Ticket)).all()}


def _jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _import(path: Path, settings: Settings, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "kind": "posts",
        "mapping": {},
        "constants": {},
        "batch_size": 500,
        "checkpoint": None,
        "restart": False,
        "extra_as_metadata": False,
    }
    args.update(kwargs)
    return run_import(path, settings=settings, **args)


def test_csv_posts_with_mapping(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    path = tmp_path / "tweets.csv"
    path.write_text(
        "tweet_id,body,handle,posted,link,stars,lang\n"
        '101,"App crashes on login, mail me at jane.doe@example.com or call +44 20 7946 0958",'
        "@janedoe,2026-11-02T09:14:00Z,https://x.com/i/status/101,2,en\n"
        '102,"Support never answered my refund request\nfor two weeks",@bob_k,'
        "2026-11-03T10:00:00,,4.5,\n",
        encoding="utf-8",
    )
    summary = _import(path, settings, mapping=TWEET_MAP, constants={"platform": "Twitter"})

    assert summary["rows"] == 2 and summary["imported"] == 2
    assert summary["updated"] == summary["duplicates"] == summary["rejected"] == 0
    assert summary["rejections"] == [] and summary["resumed_from_line"] is None
    assert summary["file"] == str(path.resolve())
    tickets = _tickets(engine)
    assert sorted(tickets) == ["101", "102"]
    first, second = tickets["101"], tickets["102"]
    assert (first.source, first.channel, first.status) == ("twitter", "social", "pending")
    assert first.body == "App crashes on login, mail me at [EMAIL] or call [PHONE]"
    assert first.meta == {"url": "https://x.com/i/status/101", "rating": 2.0}
    assert first.created_at == datetime(2026, 11, 2, 9, 14, tzinfo=UTC)
    assert first.author_hash == author_hash("@janedoe", "test-salt")
    assert second.author_hash == author_hash("@bob_k", "test-salt")
    assert second.body == "Support never answered my refund request\nfor two weeks"
    # Empty cells are absent: no url, and the unmapped `lang` column is ignored.
    assert second.meta == {"rating": 4.5}
    assert second.created_at == datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
    with engine.connect() as conn:
        stored = [
            str(conn.execute(text(f"SELECT * FROM {t}")).all()) for t in ("ticket", "raw_delivery")
        ]
        delivery = conn.execute(text("SELECT kind, content_type, size_bytes FROM raw_delivery"))
        assert delivery.all() == [("import", "text/csv", path.stat().st_size)]
    for dump in stored:
        assert "janedoe" not in dump and "bob_k" not in dump and "jane.doe" not in dump
    assert not list((tmp_path / "var" / "imports").glob("*.json"))


def test_jsonl_dotted_paths_and_extra_metadata(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = _jsonl(
        tmp_path / "posts.ndjson",
        [
            {
                "id_str": "9001",
                "full_text": "Checkout keeps spinning forever",
                "user": {"screen_name": "skyfan", "followers": 12},
                "lang": "en",
                "retweets": 3,
                "reply_to": None,
            },
        ],
    )
    summary = _import(
        path,
        make_settings(),
        mapping={"id": "id_str", "text": "full_text", "author": "user.screen_name"},
        constants={"platform": "x"},
        extra_as_metadata=True,
    )
    assert (summary["rows"], summary["imported"], summary["rejected"]) == (1, 1, 0)
    ticket = _tickets(engine)["9001"]
    assert (ticket.source, ticket.body) == ("x", "Checkout keeps spinning forever")
    assert ticket.author_hash == author_hash("skyfan", "test-salt")
    # The object a dotted path read from is used up: the handle never lands in metadata.
    assert ticket.meta == {"lang": "en", "retweets": 3}


def test_bad_lines_are_rejected_and_the_rest_stored(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = _jsonl(
        tmp_path / "posts.jsonl",
        [
            {"platform": "twitter", "id": 1, "text": "My order arrived damaged", "rating": 1},
            '{"platform": "twitter", "id": "2", "text": "broken',
            {"platform": "twitter", "id": "3", "text": "   "},
            {"platform": "twitter", "id": "4", "text": "Great app", "rating": 9},
            {"platform": "myspace", "id": "5", "text": "hello"},
            "",
            {"platform": "reddit", "id": "7", "text": "The app logs me out every hour"},
        ],
    )
    rejects = tmp_path / "out" / "rejects.jsonl"
    summary = _import(path, make_settings(), rejects=rejects)

    assert summary["rows"] == 6
    assert (summary["imported"], summary["duplicates"], summary["rejected"]) == (2, 0, 4)
    rejections = summary["rejections"]
    assert [r["line"] for r in rejections] == [2, 3, 4, 5]
    assert rejections[0]["reason"] == (
        "not valid JSON: Unterminated string starting at (column 44)"
    )
    assert rejections[1]["reason"] == "text is empty; send the message text."
    assert rejections[2]["reason"] == "rating: Input should be less than or equal to 5 (got 9)"
    assert rejections[3]["reason"] == (
        "platform: unknown platform 'myspace' (add it to EXTRA_SOURCES to accept it)"
    )
    assert [json.loads(line) for line in rejects.read_text().splitlines()] == rejections
    tickets = _tickets(engine)
    assert sorted(tickets) == ["1", "7"]
    assert tickets["1"].meta == {"rating": 1.0} and tickets["7"].source == "reddit"


def test_csv_row_errors_name_the_column(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "tickets.csv"
    path.write_text(
        "ticket_id,subject,description,opened\n"
        "1,Login,Cannot log in since the update,2026-01-05\n"
        "2,Refund,Where is my refund\n"
        "3,Billing,,2026-01-06\n"
        "4,Billing,Charged twice,yesterday\n",
        encoding="utf-8",
    )
    summary = _import(
        path,
        make_settings(),
        kind="tickets",
        mapping={"external_id": "ticket_id", "body": "description", "created_at": "opened"},
        constants={"source": "zendesk"},
    )
    assert (summary["rows"], summary["imported"], summary["rejected"]) == (4, 1, 3)
    assert summary["rejections"] == [
        {"line": 3, "reason": "expected 4 columns as in the header, found 3"},
        {"line": 4, "reason": "body (column 'description'): Field required"},
        {
            "line": 5,
            "reason": "created_at (column 'opened'): Input should be a valid datetime or date, "
            "input is too short (got 'yesterday')",
        },
    ]
    ticket = _tickets(engine)["1"]
    assert (ticket.source, ticket.channel, ticket.subject) == ("zendesk", "ticket", "Login")


def test_duplicates_repeats_and_updates(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    path = tmp_path / "tickets.csv"
    path.write_text(
        "source,external_id,subject,body\n"
        "zendesk,1001,Crash,App crashes on start\n"
        "zendesk,1002,,Refund still not processed\n"
        "ZENDESK,1001,Crash,App crashes on start (sent again)\n"
        "freshdesk,1001,,Different helpdesk same number\n",
        encoding="utf-8",
    )
    first = _import(path, settings, kind="tickets", batch_size=2)
    assert (first["rows"], first["imported"], first["duplicates"]) == (4, 3, 1)
    assert _tickets(engine)["1002"].body == "Refund still not processed"
    with Session(engine) as s:
        stored = s.exec(select(Ticket).where(Ticket.external_id == "1001")).all()
    assert {(t.source, t.body) for t in stored} == {
        ("zendesk", "App crashes on start"),
        ("freshdesk", "Different helpdesk same number"),
    }
    assert count_rows(engine, "ticket") == 3

    second = _import(path, settings, kind="tickets", batch_size=2)
    assert (second["imported"], second["updated"], second["rejected"]) == (0, 0, 0)
    assert second["duplicates"] == second["rows"] == 4
    assert count_rows(engine, "ticket") == 3

    with Session(engine) as s:
        s.execute(update(Ticket).values(status="done"))
        s.commit()
    changed = tmp_path / "changed.csv"
    changed.write_text(
        "id,text\n1002,Refund still not processed after three weeks\n1003,New one\n",
        encoding="utf-8",
    )
    third = _import(
        changed,
        settings,
        kind="tickets",
        mapping={"external_id": "id", "body": "text"},
        constants={"source": "zendesk"},
    )
    assert (third["rows"], third["imported"], third["updated"], third["duplicates"]) == (2, 1, 1, 0)
    ticket = _tickets(engine)["1002"]
    assert ticket.body == "Refund still not processed after three weeks"
    assert (ticket.status, ticket.revision) == ("pending", 2)
    assert count_rows(engine, "ticket") == 4


def test_interrupted_import_resumes_from_its_checkpoint(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    rows: list[dict[str, Any] | str] = [
        {"platform": "trustpilot", "id": f"r{i}", "text": f"Delivery {i} was late", "rating": 2}
        for i in range(1, 26)
    ]
    rows.insert(3, {"platform": "trustpilot", "id": "bad", "text": ""})  # line 4
    rows.append({"platform": "trustpilot", "id": "r1", "text": "Delivery 1 was late again"})
    path = _jsonl(tmp_path / "reviews.jsonl", rows)  # 27 lines: 25 posts, 1 bad, 1 repeat

    with pytest.raises(ImportInterrupted) as stopped:
        _import(path, settings, batch_size=10, stop_after_batches=1)
    assert stopped.value.line == 11
    assert count_rows(engine, "ticket") == 10
    checkpoints = list((tmp_path / "var" / "imports").glob("*.json"))
    assert len(checkpoints) == 1 and checkpoints[0] == stopped.value.checkpoint
    saved = json.loads(checkpoints[0].read_text())
    assert saved["line"] == 11
    assert saved["counts"] == {
        "rows": 11,
        "imported": 10,
        "updated": 0,
        "duplicates": 0,
        "rejected": 1,
    }
    assert saved["rejections"] == [{"line": 4, "reason": "text is empty; send the message text."}]

    # The next batch is committed but, as after a crash, its checkpoint is lost.
    with pytest.raises(ImportInterrupted):
        _import(path, settings, batch_size=10, stop_after_batches=1)
    assert count_rows(engine, "ticket") == 20
    checkpoints[0].write_text(json.dumps(saved))

    summary = _import(path, settings, batch_size=10)
    assert summary["resumed_from_line"] == 11
    assert summary["rows"] == 27
    # Lines 12-21 were stored already: storing them again changes nothing.
    assert (summary["imported"], summary["updated"]) == (15, 0)
    assert summary["duplicates"] == 10 + 1
    assert summary["rejected"] == 1 and summary["rejections"][0]["line"] == 4
    assert count_rows(engine, "ticket") == 25
    assert _tickets(engine)["r1"].body == "Delivery 1 was late"
    assert not checkpoints[0].exists()

    # --restart ignores a checkpoint; everything is a repeat now.
    with pytest.raises(ImportInterrupted):
        _import(path, settings, batch_size=10, stop_after_batches=1)
    again = _import(path, settings, batch_size=10, restart=True)
    assert again["resumed_from_line"] is None
    assert (again["rows"], again["imported"], again["duplicates"]) == (27, 0, 26)


def test_cli(
    engine: Engine,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.core.config import get_settings

    path = tmp_path / "tweets.csv"
    path.write_text(
        "tweet_id,body,handle\n"
        "555,@SkyLineAir flight delayed 5 hours and nobody at the desk can help,@traveller\n"
        "556,,@traveller\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    try:
        args = ["import", str(path), "--platform", "twitter", "--quiet"]
        args += ["--map", "id=tweet_id", "--map", "text=body", "--map", "author=handle"]
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert (summary["rows"], summary["imported"], summary["rejected"]) == (2, 1, 1)
        assert summary["rejections"] == [
            {"line": 3, "reason": "text (column 'body'): Field required"}
        ]
        ticket = _tickets(engine)["555"]
        assert ticket.source == "twitter" and ticket.channel == "social"
        assert ticket.author_hash is not None and len(ticket.author_hash) == 64

        assert main(["import", str(tmp_path / "missing.csv")]) == 2
        assert "no such file" in capsys.readouterr().err
        assert main(["import", str(path), "--map", "text"]) == 2
        assert "FIELD=COLUMN" in capsys.readouterr().err
        assert main(["import", str(path), "--map", "text=nope"]) == 2
        assert "no column 'nope'" in capsys.readouterr().err
        notes = tmp_path / "notes.txt"
        notes.write_text("hello\n")
        assert main(["import", str(notes)]) == 2
        assert "--format" in capsys.readouterr().err
        assert count_rows(engine, "ticket") == 1
    finally:
        get_settings.cache_clear()
