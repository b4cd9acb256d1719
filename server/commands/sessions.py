"""``trailguard sessions export [--labelled] [--out FILE]``: page sessions as JSON Lines.

Each line is one session in the session file format (see :mod:`server.sessions_api`):
stored sessions from the database (samples from Redis while buffered there, else from the
archive), then, unless ``--labelled``, live sessions that have no row yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import IO, Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from renderer.errors import NotFound
from scoring import session_store as store
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import PageSession
from server.commands.serve import redis_url_for
from server.sessions_api import session_record
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    sessions = sub.add_parser("sessions", help="collected page sessions")
    ssub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    export = ssub.add_parser("export", help="write sessions as JSON Lines (session file format)")
    export.add_argument("--labelled", action="store_true", help="only sessions with a label")
    export.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    export.set_defaults(func=export_cmd)


def _stored_ids(sessions: sessionmaker[Session], labelled: bool) -> list[str]:
    query = select(PageSession.id).order_by(PageSession.started_at, PageSession.id)
    if labelled:
        query = query.where(PageSession.label.is_not(None))
    with sessions() as s:
        return list(s.scalars(query))


async def export_sessions(
    redis: aioredis.Redis, sessions: sessionmaker[Session], out: IO[str], labelled: bool
) -> tuple[int, int]:
    """Write the sessions to ``out``; returns (written, skipped because their samples are gone)."""
    ids = _stored_ids(sessions, labelled)
    if not labelled:
        known = set(ids)
        ids += [sid for sid in await store.live_session_ids(redis) if sid not in known]
    written = skipped = 0
    for sid in ids:
        try:
            record: dict[str, Any] = await session_record(redis, sessions, sid)
        except NotFound:
            skipped += 1
            continue
        if record["label"] is None:
            del record["label"]
        out.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        written += 1
    return written, skipped


async def _run(url: str, sessions: sessionmaker[Session], out: IO[str], labelled: bool) -> int:
    redis = aioredis.Redis.from_url(url)
    try:
        written, skipped = await export_sessions(redis, sessions, out, labelled)
    finally:
        await redis.aclose()
    print(f"exported {written} sessions ({skipped} without samples)", file=sys.stderr)
    return 0


def export_cmd(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url)
    try:
        with redis_url_for(settings) as url:
            sessions = make_sessionmaker(engine)
            if args.out:
                with open(args.out, "w", encoding="utf-8") as out:
                    return asyncio.run(_run(url, sessions, out, args.labelled))
            return asyncio.run(_run(url, sessions, sys.stdout, args.labelled))
    finally:
        engine.dispose()
