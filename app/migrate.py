"""`python -m app.migrate [upgrade|downgrade|revision] ...`: Alembic without an alembic.ini."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.core.config import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at app/migrations and the given (or configured) database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    url = database_url or get_settings().database_url
    # ConfigParser interpolation would choke on a literal % in a password.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Bring the database schema up to `revision`."""
    command.upgrade(alembic_config(database_url), revision)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m app.migrate", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    up = sub.add_parser("upgrade", help="migrate up (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="migrate down")
    down.add_argument("revision")
    rev = sub.add_parser("revision", help="autogenerate a new migration")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args()
    cfg = alembic_config()
    if args.cmd in (None, "upgrade"):
        command.upgrade(cfg, getattr(args, "revision", "head"))
    elif args.cmd == "downgrade":
        command.downgrade(cfg, args.revision)
    else:
        command.revision(cfg, message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
