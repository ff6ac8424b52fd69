"""`python -m pipelines <job>`: batch jobs against the configured database."""

from __future__ import annotations

import argparse
from datetime import datetime

from app.core.config import get_settings
from app.core.db import make_engine
from app.core.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    """Parse the job name and its arguments, run it, print a summary."""
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    jobs = parser.add_subparsers(dest="job", required=True)
    rq = jobs.add_parser("requeue", help="queue tickets for analysis again")
    rq.add_argument(
        "--status",
        choices=["failed", "done", "all"],
        default="failed",
        help="which tickets (default: failed)",
    )
    rq.add_argument("--source", default=None, help="only this source")
    rq.add_argument(
        "--received-from",
        type=datetime.fromisoformat,
        default=None,
        help="only tickets received at or after this ISO time",
    )
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    engine = make_engine(settings.database_url)
    try:
        if args.job == "requeue":
            from pipelines.requeue import requeue

            statuses = ["failed", "done"] if args.status == "all" else [args.status]
            n = requeue(
                engine, statuses=statuses, source=args.source, received_from=args.received_from
            )
            print(f"requeued {n} tickets ({', '.join(statuses)}); the worker analyses them next")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
