"""``trailguard site add NAME --origin URL ...``: register a site and print its key and secret."""

from __future__ import annotations

import argparse

from scoring.database import make_engine, make_sessionmaker
from server.settings import Settings
from server.sites import create_site


def register(sub: argparse._SubParsersAction) -> None:
    site = sub.add_parser("site", help="sites that embed the collector")
    sitesub = site.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    add = sitesub.add_parser("add", help="add a site; prints its key and secret (shown once)")
    add.add_argument("name")
    add.add_argument(
        "--origin",
        action="append",
        required=True,
        metavar="URL",
        help="an origin allowed to send samples, e.g. https://shop.example (repeatable)",
    )
    add.set_defaults(func=add_site)


def add_site(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            new = create_site(session, args.name, args.origin)
            session.commit()
            print(f"site_id={new.site.id}")
            print(f"site_key={new.site.key}")
            print(f"site_secret={new.secret}")
            print(f"origins={','.join(new.site.allowed_origins)}")
    finally:
        engine.dispose()
    return 0
