"""What every JSON endpoint called by a site's back end shares: site-secret authentication
and one mapping of TrailGuard errors to HTTP statuses (``{"error": code, "detail": …}``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from renderer.errors import AccessDenied, InvalidInput, NotFound
from server.app import services
from server.siteauth import authenticate_site

Handler = Callable[[Request], Awaitable[Response]]


def error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def authenticate(request: Request) -> int:
    """The id of the site whose valid key and secret the request carries; AccessDenied else."""
    svc = services(request)

    def check() -> int:
        with svc.sessions() as session:
            return authenticate_site(request, session).id

    return await run_in_threadpool(check)


def site_id(request: Request) -> int:
    """The authenticated site of a request that passed :func:`guarded`."""
    return int(request.state.site_id)


async def guarded(
    request: Request, handler: Handler, conflicts: tuple[type[InvalidInput], ...] = ()
) -> Response:
    """Authenticate, run ``handler``, and answer its expected errors with a status:
    401 access denied, 409 for ``conflicts``, 413 ``too_large``, 400 other invalid input,
    404 not found."""
    try:
        # handlers scope what they read and write to this site
        request.state.site_id = await authenticate(request)
        return await handler(request)
    except AccessDenied as e:
        return error(401, "access_denied", str(e))
    except InvalidInput as e:
        status = 409 if isinstance(e, conflicts) else 413 if e.code == "too_large" else 400
        return error(status, e.code, str(e))
    except NotFound as e:
        return error(404, "not_found", str(e))
