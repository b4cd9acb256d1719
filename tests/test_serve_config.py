"""The uvicorn settings `trailguard serve` runs with (and bench/ingest.py measures)."""

from __future__ import annotations

import uvloop
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.commands.serve import uvicorn_config


def test_serve_runs_uvloop_httptools_and_sansio_websockets() -> None:
    config = uvicorn_config(Starlette(), "127.0.0.1", 0, "warning")
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    assert config.ws_protocol_class is WebSocketsSansIOProtocol
    assert config.ws_per_message_deflate is False
    factory = config.get_loop_factory()
    assert factory is not None  # asyncio.run(server.serve()) would ignore it: _serve uses run()
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
