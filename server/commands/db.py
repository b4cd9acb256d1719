"""``trailguard db``: apply and write schema migrations."""

from __future__ import annotations

import argparse

from scoring import migrate
from scoring.database import make_engine, ping
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database schema: upgrade, downgrade, revision, check")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dbsub.add_parser("upgrade", help="apply migrations up to REVISION (default head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=upgrade)
    down = dbsub.add_parser("downgrade", help="revert migrations down to REVISION")
    down.add_argument("revision")
    down.set_defaults(func=downgrade)
    rev = dbsub.add_parser("revision", help="autogenerate a revision from the models")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--rev-id", help="revision id (default: random)")
    rev.set_defaults(func=revision)
    check = dbsub.add_parser("check", help="exit 1 if the models differ from the migrations")
    check.set_defaults(func=check_cmd)


def _reachable(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        ping(engine)
    finally:
        engine.dispose()


def upgrade(settings: Settings, args: argparse.Namespace) -> int:
    _reachable(settings)
    migrate.upgrade(settings.database_url, args.revision)
    return 0


def downgrade(settings: Settings, args: argparse.Namespace) -> int:
    _reachable(settings)
    migrate.downgrade(settings.database_url, args.revision)
    return 0


def revision(settings: Settings, args: argparse.Namespace) -> int:
    _reachable(settings)
    migrate.revision(settings.database_url, args.message, args.rev_id)
    return 0


def check_cmd(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url)
    try:
        ping(engine)
        diffs = migrate.pending_differences(engine)
    finally:
        engine.dispose()
    for diff in diffs:
        print(diff)
    return 1 if diffs else 0
