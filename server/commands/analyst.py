"""``trailguard analyst add EMAIL [--admin] [--password-stdin]`` and ``trailguard analyst list``."""

from __future__ import annotations

import argparse
import getpass
import sys

from sqlalchemy import select

from renderer.errors import InvalidInput
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import Analyst
from server.auth import add_analyst
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    analyst = sub.add_parser("analyst", help="people who review cases (analysts and admins)")
    asub = analyst.add_subparsers(dest="analyst_command", metavar="ACTION", required=True)
    add = asub.add_parser("add", help="add an analyst; asks for the password")
    add.add_argument("email")
    add.add_argument("--admin", action="store_true", help="may manage sites, accounts, analysts")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of a prompt",
    )
    add.set_defaults(func=add_cmd)
    lst = asub.add_parser("list", help="list analysts")
    lst.set_defaults(func=list_cmd)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise InvalidInput("the two passwords differ", "password_mismatch")
    return first


def add_cmd(settings: Settings, args: argparse.Namespace) -> int:
    password = _password(args)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            analyst = add_analyst(
                session, args.email, password, "admin" if args.admin else "analyst"
            )
            print(f"analyst {analyst.email} added (id {analyst.id}, role {analyst.role})")
    finally:
        engine.dispose()
    return 0


def list_cmd(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            for a in session.scalars(select(Analyst).order_by(Analyst.email)):
                print(f"{a.id}\t{a.email}\t{a.role}\t{'active' if a.active else 'inactive'}")
    finally:
        engine.dispose()
    return 0
