"""The dashboard's web application: three pages and their JSON answers, GET only.

Pages are static HTML shells (no inline script or style, so the Content-Security-Policy can
forbid both); the page's script fetches the JSON answers and polls them with a cursor."""
from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from renas_db.dashboard.data import MAX_POINTS, ReadOnlyDB, Unavailable
from renas_db.errors import NotFoundError, RenasError

log = logging.getLogger("renas_db.dashboard")
STATIC = Path(__file__).with_name("static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class BadParam(Exception):
    pass


def _int(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(f"{key} must be an integer, not {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise BadParam(f"{key} must be between {lo} and {hi}, not {value}")
    return value


def _stride(request: Request) -> int | None:
    if "stride" not in request.query_params:
        return None
    value = _int(request, "stride", 1, 1, 2 ** 30)
    if value & (value - 1):
        raise BadParam(f"stride must be a power of two, not {value}")
    return value


def _page(title: str, page: str, **data: str) -> str:
    attrs = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in data.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - renas-db</title>
<link rel="stylesheet" href="/static/uPlot.min.css">
<link rel="stylesheet" href="/static/dashboard.css">
</head><body data-page="{page}" {attrs}>
<header><a href="/" class="home">renas-db</a> <span id="crumbs"></span>
<span id="conn" class="conn ok" role="status">live</span></header>
<main id="main"><p class="loading">loading...</p></main>
<script src="/static/uPlot.iife.min.js"></script>
<script src="/static/dashboard.js"></script>
</body></html>"""


def _not_found_page(what: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>not found - renas-db</title>
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body data-page="notfound"><header><a href="/" class="home">renas-db</a></header>
<main><h1>Not found</h1><p id="ready" class="notfound">{html.escape(what)}</p>
<p><a href="/">all searches</a></p></main></body></html>"""


def create_app(db: ReadOnlyDB) -> Starlette:
    async def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kw)

    def api(handler: Callable[[Request], Awaitable[Any]]
            ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                body = await handler(request)
            except BadParam as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except NotFoundError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except Unavailable:
                return JSONResponse({"error": "database unreachable"}, status_code=503)
            except RenasError as exc:
                log.warning("dashboard: %s: %s", request.url.path, exc)
                return JSONResponse({"error": str(exc)}, status_code=500)
            return JSONResponse(body)
        return wrapped

    @api
    async def searches(request: Request) -> Any:
        return {"searches": await call(db.searches)}

    @api
    async def search(request: Request) -> Any:
        return await call(db.search, request.path_params["name"])

    @api
    async def progress(request: Request) -> Any:
        after = _int(request, "after", 0, 0, 2 ** 40)
        points = _int(request, "points", MAX_POINTS, 10, 10_000)
        return await call(db.progress, request.path_params["name"], after=after,
                          stride=_stride(request), points=points)

    @api
    async def population(request: Request) -> Any:
        return {"search": request.path_params["name"],
                "population": await call(db.population, request.path_params["name"])}

    @api
    async def controller(request: Request) -> Any:
        after = _int(request, "after", 0, 0, 2 ** 40)
        return await call(db.controller, request.path_params["name"], after=after)

    @api
    async def workers(request: Request) -> Any:
        after = _int(request, "after_event", 0, 0, 2 ** 62)
        return await call(db.workers, request.path_params["name"], after_event=after)

    @api
    async def reports(request: Request) -> Any:
        return await call(db.reports, request.path_params["name"])

    @api
    async def individual(request: Request) -> Any:
        raw = request.path_params["id"]
        try:
            ind_id = int(raw)
        except ValueError:
            raise BadParam(f"individual id must be an integer, not {raw[:40]!r}") from None
        row = await call(db.individual, ind_id)
        row["cell_svg"] = await call(_svg, row["genotype"])
        return row

    async def home(request: Request) -> Response:
        return HTMLResponse(_page("searches", "searches"))

    async def search_page(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            await call(db.search, name)
        except NotFoundError:
            return HTMLResponse(_not_found_page(f"There is no search named {name!r}."),
                                status_code=404)
        except Unavailable:
            pass  # the page itself says so, and retries
        return HTMLResponse(_page(name, "search", search=name))

    async def individual_page(request: Request) -> Response:
        raw = request.path_params["id"]
        if not raw.isdigit():
            return HTMLResponse(_not_found_page(f"{raw!r} is not an individual's id."),
                                status_code=404)
        try:
            await call(db.individual, int(raw))
        except NotFoundError:
            return HTMLResponse(_not_found_page(f"There is no individual {raw}."),
                                status_code=404)
        except Unavailable:
            pass
        return HTMLResponse(_page(f"individual {raw}", "individual", id=raw))

    async def not_found(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "not found" if code == 404 else "error"},
                                status_code=code)
        if code == 404:
            return HTMLResponse(_not_found_page(f"Nothing at {request.url.path}."),
                                status_code=404)
        return HTMLResponse("method not allowed" if code == 405 else "error", status_code=code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("dashboard: %s failed: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"error": "internal error"}, status_code=500)

    get = ["GET"]
    routes = [
        Route("/", home, methods=get),
        Route("/search/{name}", search_page, methods=get),
        Route("/individual/{id}", individual_page, methods=get),
        Route("/api/searches", searches, methods=get),
        Route("/api/searches/{name}/progress", progress, methods=get),
        Route("/api/searches/{name}/population", population, methods=get),
        Route("/api/searches/{name}/controller", controller, methods=get),
        Route("/api/searches/{name}/workers", workers, methods=get),
        Route("/api/searches/{name}/reports", reports, methods=get),
        Route("/api/searches/{name}", search, methods=get),
        Route("/api/individuals/{id}", individual, methods=get),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)],
                     exception_handlers={HTTPException: not_found, 500: server_error})


class SecurityHeaders:
    """Adds HEADERS (the Content-Security-Policy first) to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in HEADERS.items():
                    if k not in headers:
                        headers[k] = v
            await send(message)
        await self.app(scope, receive, with_headers)


def _svg(genotype_text: str) -> str | None:
    """The cell as `show` draws it, inline SVG (None when Graphviz's dot is missing)."""
    from renas_db.drawing import cell_svg
    from renas_db.space import parse
    try:
        return cell_svg(parse(genotype_text), prefix="cell-")
    except RenasError as exc:
        log.warning("dashboard: cannot draw the cell: %s", exc)
        return None
