"""The web page (``pgmaxsim serve``): a Starlette app over one read-only database role.

Routes (all GET; every URL is bookmarkable):

==========================================  ==============================================
``/?index=NAME&q=TEXT[&k=N]``               search box, index picker, ranked results
``/row?index=NAME&id=ID[&q=TEXT&token=N]``  one row: full page, per-query-token heatmap
``/image?index=NAME&id=ID[&q=&token=&w=]``  the row's image (PNG), with the heatmap when asked
``/marks?index=NAME&id=ID&q=TEXT``          a snippet's matched words (JSON, for static/marks.js)
``/status``                                 indexes, queue, failed rows, workers, scorer
``/healthz``                                ``ok`` when the database answers (503 otherwise)
``/static/...``                             the stylesheet (no CDN: the page works offline)
==========================================  ==============================================

Outcomes are HTTP statuses with a readable page: an empty query 400, an unknown index or row
404, a role without the right 403, the database down 503. Templates autoescape everything
(query text, row contents, error messages). Only the Host names the server was started for
are answered (a page on another site cannot reach it by DNS rebinding). The page works without
script; its one script (static/marks.js) marks the matched words of the snippets once they come.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pgmaxsim import display
from pgmaxsim.errors import one_line
from pgmaxsim.search import PendingRowsWarning
from pgmaxsim.web import data, overlay
from pgmaxsim.web.db import BadRequest, Database, NotFound, Unavailable, WebError
from pgmaxsim.web.status import read_status

HERE = Path(__file__).resolve().parent

DEFAULT_K = 10
MAX_K = 100
MAX_QUERY_CHARS = 2000
THUMB_WIDTH = 360
SNIPPET_CHARS = 320
SECURITY_HEADERS = {
    # styles, images and the one script (static/marks.js) from this server only; no inline script or style
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self';"
                               " img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Settings:
    database: Database
    default_index: str | None = None
    k: int = DEFAULT_K


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["snippet"] = lambda text, n=SNIPPET_CHARS: display.snippet(text, n)
    env.filters["ms"] = lambda v: "-" if v is None else f"{v:.1f} ms"
    env.globals["url"] = lambda path, **params: path + ("?" + urlencode(
        {k: v for k, v in params.items() if v is not None and v != ""}) if params else "")
    return Jinja2Templates(env=env)


templates = _templates()


def _page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    context = {"names": [], "index": None, "q": "", **context}
    return templates.TemplateResponse(request, name, {"settings": request.app.state.settings, **context},
                                      status_code=status, headers=SECURITY_HEADERS)


def _k(request: Request) -> int:
    raw = request.query_params.get("k")
    if raw is None or raw == "":
        return int(request.app.state.settings.k)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_K:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, got {raw!r}")
    return int(raw)


def _token(request: Request) -> int | None:
    raw = request.query_params.get("token")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BadRequest(f"token must be a query token number, got {raw!r}")
    return int(raw)


def _query(request: Request) -> str | None:
    q = request.query_params.get("q")
    if q is not None and len(q) > MAX_QUERY_CHARS:
        raise BadRequest(f"the query is longer than {MAX_QUERY_CHARS} characters")
    return q


def _chosen_index(request: Request, names: list[str]) -> str | None:
    name = request.query_params.get("index") or request.app.state.settings.default_index
    if name:
        return name
    return names[0] if names else None


def search_page(request: Request) -> Response:
    t0 = time.perf_counter()
    db: Database = request.app.state.settings.database
    q = _query(request)
    k = _k(request)
    with db.transaction() as conn:
        if not data.schema_installed(conn):
            raise Unavailable(f"the maxsim schema is not installed in {db.shown_as}: run pgmaxsim migrate")
        names = data.index_names(conn)
        index = _chosen_index(request, names)
        context: dict[str, Any] = {"names": names, "index": index, "q": q or "", "k": k, "found": None}
        if q is None:  # the bare page: a search box
            if index and index not in names:
                raise NotFound(f"no index named {index!r} (indexes: {', '.join(names) or 'none yet'})")
            return _page(request, "search.html", **context)
        if not q.strip():
            raise BadRequest("the query is empty: type something to search for")
        if not index:
            raise NotFound("there are no indexes to search yet (pgmaxsim index create …, or pgmaxsim demo)")
        info = data.index_spec(conn, index)
        found = data.search(conn, info, q, k)
        for r in found.results:
            r.label = display.label(r.row) or f"{info.id_column} {r.key}"
            r.body = _unless_same(display.body(r.row), r.label)
        # matched words: each snippet asks /marks after the page has come (an explanation costs a
        # statement per row: ten of them would double the page's time)
        context.update(found=found, info=info, explained=overlay.available(),
                       marks=bool(info.text_column) and overlay.available())
    total = (time.perf_counter() - t0) * 1000
    response = _page(request, "search.html", **context, total_ms=total)
    response.headers["Server-Timing"] = found.timings.server_timing() + f", total;dur={total:.1f}"
    return response


def row_page(request: Request) -> Response:
    db: Database = request.app.state.settings.database
    index, key = _required(request, "index"), _required(request, "id")
    q, token = _query(request), _token(request)
    with db.transaction() as conn:
        names = data.index_names(conn)
        info = data.index_spec(conn, index)
        cols = data.columns(conn, info)
        row = data.fetch_rows(conn, info, cols, [key]).get(key)
        if row is None:
            raise NotFound(f"index {index!r} has no row {key!r} that role {_role(conn)} may read")
        has_image = bool(row.pop("pgmaxsim has image", False))
        score = token_names = pieces = explanation = None
        no_layout = False
        text = row.get(info.text_column) if info.text_column else None
        if q and q.strip():
            tokens = data.encode(info, q)
            score = data.score_of(conn, info, tokens, key)
            explanation = overlay.explain(conn, info, tokens, key)
            if explanation is not None and explanation.kind is None:  # no layout stored for this row
                explanation, no_layout = None, True
            if explanation is not None:
                token_names = overlay.token_names(data.encoder(info), q, len(tokens))
                if token is not None and token >= len(token_names):
                    raise BadRequest(f"the query has {len(token_names)} tokens; there is no token {token}")
                pieces = overlay.marked(text if isinstance(text, str) else None, explanation, token)
    label = display.label(row) or f"{info.id_column} {key}"
    return _page(request, "row.html", index=index, key=key, q=q or "", token=token, row=row, info=info,
                 label=label, body=text if pieces else _unless_same(display.body(row), label),
                 has_image=has_image, score=score, token_names=token_names, names=names, pieces=pieces,
                 heatmap=overlay.has_patches(explanation), explained=overlay.available(),
                 layout=getattr(explanation, "kind", None), no_layout=no_layout)


def marks(request: Request) -> Response:
    """A result's snippet with its matched words, as JSON ``{"pieces": [[text, strength | null], ...]}``
    (``null``: nothing to mark); static/marks.js puts it in place of the plain snippet."""
    db: Database = request.app.state.settings.database
    index, key, q = _required(request, "index"), _required(request, "id"), _required(request, "q")
    if len(q) > MAX_QUERY_CHARS:
        raise BadRequest(f"the query is longer than {MAX_QUERY_CHARS} characters")
    pieces = None
    with db.transaction() as conn:
        info = data.index_spec(conn, index)
        if info.text_column:
            row = data.fetch_rows(conn, info, data.columns(conn, info), [key]).get(key)
            text = row.get(info.text_column) if row else None
            explanation = overlay.explain(conn, info, data.encode(info, q), key) if isinstance(text, str) else None
            found = overlay.marked(text, explanation, None)
            pieces = [[p.text, p.weight] for p in overlay.excerpt(found, SNIPPET_CHARS)] if found else None
    return JSONResponse({"pieces": pieces}, headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=60"})


def image(request: Request) -> Response:
    db: Database = request.app.state.settings.database
    index, key = _required(request, "index"), _required(request, "id")
    q, token = _query(request), _token(request)
    width = request.query_params.get("w")
    if width is not None and (not width.isdigit() or not 16 <= int(width) <= 4096):
        raise BadRequest(f"w must be a width in pixels from 16 to 4096, got {width!r}")
    with db.transaction() as conn:
        info = data.index_spec(conn, index)
        found = data.row_image(conn, info, data.columns(conn, info), key)
        if found is None:
            raise NotFound(f"index {index!r} has no image for row {key!r}")
        content, mime = found
        explanation = None
        if q and q.strip() and info.image_column:  # only rows embedded from their image have a grid
            explanation = overlay.explain(conn, info, data.encode(info, q), key)
    if overlay.has_patches(explanation):
        content, mime = overlay.heatmap_png(content, explanation, token, int(width) if width else None), "image/png"
    elif width:
        content, mime = _shrunk(content, int(width)), "image/png"
    return Response(content, media_type=mime, headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=60"})


def _unless_same(body: str, label: str) -> str:
    """A row's text, or nothing when it only repeats the label (a page image with a title column)."""
    return "" if " ".join(body.split()) == " ".join(label.split()) else body


def _shrunk(content: bytes, width: int) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(content)) as img:
        img.load()
        return overlay.png(img.convert("RGB") if img.mode not in ("RGB", "L") else img, width)


def status_page(request: Request) -> Response:
    db: Database = request.app.state.settings.database
    with db.transaction() as conn:
        if not data.schema_installed(conn):
            raise Unavailable(f"the maxsim schema is not installed in {db.shown_as}: run pgmaxsim migrate")
        view = read_status(conn)
        names = data.index_names(conn)
    return _page(request, "status.html", view=view, names=names)


def healthz(request: Request) -> Response:
    with request.app.state.settings.database.transaction() as conn:
        conn.execute("SELECT 1")
    return PlainTextResponse("ok")


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise BadRequest(f"the URL needs ?{name}=")
    return value


def _role(conn: Any) -> str:
    return str(conn.execute("SELECT current_user").fetchone()[0])


# ---------------------------------------------------------------- errors

_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 500: "Something went wrong",
           503: "Database unavailable"}


async def _error_page(request: Request, status: int, message: str) -> Response:
    names: list[str] = []
    if status in (400, 404):  # the database answers: offer its indexes in the search box
        try:
            names = await run_in_threadpool(_index_names, request)
        except Exception:  # noqa: BLE001 - the error page must render whatever failed
            names = []
    return _page(request, "error.html", status, code=status, title=_TITLES.get(status, "Error"), message=message,
                 names=names, index=request.query_params.get("index"), q=request.query_params.get("q") or "")


def _index_names(request: Request) -> list[str]:
    with request.app.state.settings.database.transaction() as conn:
        return data.index_names(conn) if data.schema_installed(conn) else []


async def on_web_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebError)
    return await _error_page(request, exc.status, str(exc))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "there is no such page here" if exc.status_code == 404 else str(exc.detail)
    return await _error_page(request, exc.status_code, message)


async def on_error(request: Request, exc: Exception) -> Response:
    # uvicorn logs the traceback (Starlette raises the exception again after this page is sent)
    return await _error_page(request, 500, f"{type(exc).__name__}: {one_line(exc)}")


def create_app(database: Database, *, default_index: str | None = None, k: int = DEFAULT_K,
               hosts: list[str] | None = None) -> Starlette:
    """The web app over ``database`` (see the module doc); ``hosts``: Host names it answers."""
    # maxsim.search's notice about queued rows is shown on the page (data.search); not warned per request
    warnings.filterwarnings("ignore", category=PendingRowsWarning)
    app = Starlette(
        routes=[
            Route("/", search_page),
            Route("/row", row_page),
            Route("/image", image),
            Route("/marks", marks),
            Route("/status", status_page),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts or ["127.0.0.1", "localhost", "[::1]"])],
        exception_handlers={WebError: on_web_error, HTTPException: on_http_error, Exception: on_error},
    )
    app.state.settings = Settings(database, default_index, k)
    return app
