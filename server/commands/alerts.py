"""``trailguard alerts dispatch [--loop]``: send queued alert emails, digests and webhooks.

The server already does this in a background task; the command is for set-ups that run the
dispatcher as a separate process (or cron), and for sending at once after an outage. With a
Redis configured it takes the same lock as the server, so the two never send an alert twice.
"""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as aioredis

from scoring.database import make_engine, make_sessionmaker
from server.alerts import DISPATCH_INTERVAL, DispatchReport, dispatch, dispatch_locked
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    alerts = sub.add_parser("alerts", help="owner alert emails and site webhooks")
    asub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    disp = asub.add_parser("dispatch", help="send what is queued and due, then exit")
    disp.add_argument(
        "--loop", action="store_true", help=f"keep going, every {DISPATCH_INTERVAL:.0f} s"
    )
    disp.set_defaults(func=dispatch_cmd)


def _print(report: DispatchReport | None) -> None:
    if report is None:
        print("another process is dispatching alerts; nothing done")
        return
    print(
        f"emails={report.emails} digests={report.digests} webhooks={report.webhooks} "
        f"retrying={report.retrying} failed={report.failed}"
    )


async def _run(settings: Settings, loop: bool) -> int:
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    redis = aioredis.Redis.from_url(settings.redis_url) if settings.redis_url else None
    try:
        while True:
            if redis is not None:
                report = await dispatch_locked(settings, sessions, redis)
            else:
                report = await dispatch(settings, sessions)
            _print(report)
            if not loop:
                return 0 if report is None or report.failed == 0 else 1
            await asyncio.sleep(DISPATCH_INTERVAL)
    finally:
        if redis is not None:
            await redis.aclose()
        engine.dispose()


def dispatch_cmd(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_run(settings, args.loop))
