"""The data flow is server → scoring → renderer, never back."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"renderer": {"scoring", "server"}, "scoring": {"server"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_goes_back_up(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node.attr in ("environ", "getenv")
    )


def _reads_environment(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    # Setting a variable for a library that only takes its configuration from the environment
    # (prometheus-client's multiprocess directory) is not reading configuration from it.
    writes = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
    }
    return any(_is_os_environ(node) and id(node) not in writes for node in ast.walk(tree))


def test_only_the_cli_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(ROOT))
        for package in ("server", "scoring", "renderer")
        for path in (ROOT / package).rglob("*.py")
        if _reads_environment(path)
    ]
    # serve.py passes the embedded Redis URL on to worker processes it starts
    assert sorted(readers) == ["server/cli.py", "server/commands/serve.py"]
