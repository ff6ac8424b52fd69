"""`python -m pipelines digest`: write a weekly digest as JSON, Markdown or HTML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlmodel import Session

from app.core.config import Settings
from app.core.db import make_engine
from app.core.errors import AppError
from app.digests import service as digest_service
from app.digests.render import render_html, render_markdown
from app.digests.router import resolve
from app.routing.table import RoutingTable


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Build the digest of --week (default: the last complete week) and write it."""
    routing = RoutingTable.load(settings.routing_table)
    link = settings.digest_link_base
    engine = make_engine(args.database_url or settings.database_url)
    try:
        try:
            week, team = resolve(args.week, args.team, routing)
        except AppError as exc:
            print(f"digest: {exc.message}", file=sys.stderr)
            return 2
        with Session(engine, expire_on_commit=False) as session:
            if args.store:
                row = digest_service.store_digest(
                    session, week=week, team=team, routing=routing, trigger="cli", link=link
                )
                markdown, html, payload = row.markdown, row.html, None
                print(f"stored digest {row.id} ({row.week})", file=sys.stderr)
            digest = digest_service.build_digest(session, week=week, team=team, routing=routing)
            if not args.store:
                markdown = render_markdown(digest)
                html = render_html(digest, link=link)
            payload = digest.model_dump_json(indent=2)
    finally:
        engine.dispose()
    text = {"json": payload, "md": markdown, "html": html}[args.format]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({week}, {len(text):,} characters)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
