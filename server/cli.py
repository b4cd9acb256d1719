"""The ``trailguard`` console script.

This is the only place that reads the process environment: it builds the settings object and
hands it to the chosen command. Expected failures print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from renderer.errors import ConfigError, InvalidInput, ModelNotFound, StoreUnavailable
from server.commands import COMMAND_MODULES
from server.settings import describe, load_settings


def build_parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(f"  {var:34s} {doc}" for var, _default, doc in describe())
    parser = argparse.ArgumentParser(
        prog="trailguard",
        description="TrailGuard: behaviour rendered to images, judged by CNNs.",
        epilog="configuration (environment variables):\n" + settings_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(os.environ)
        code: int = args.func(settings, args)
        return code
    except ConfigError as e:
        print(f"trailguard: configuration error: {e}", file=sys.stderr)
    except StoreUnavailable as e:
        print(f"trailguard: {e}", file=sys.stderr)
    except ModelNotFound as e:
        print(f"trailguard: {e}", file=sys.stderr)
    except InvalidInput as e:
        print(f"trailguard: invalid input ({e.code}): {e}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
