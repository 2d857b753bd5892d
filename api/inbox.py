"""GET /inbox and /inbox.js: the browser page (plain HTML and one small script, no build step).

The page signs in with a token in the URL fragment (``/inbox#token=...``, as ``herald token USER --url``
prints): a fragment never reaches the server or a log, and the script moves the token to the tab's
``sessionStorage`` and removes it from the address bar. The token's ``sub`` is the user the page shows.
Everything the page shows comes from the API's own routes; notification text is set with ``textContent``,
never parsed as HTML, and the Content-Security-Policy allows scripts from this origin only.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"


def _headers(request: web.Request) -> dict[str, str]:
    host = request.host
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


async def page(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "inbox.html").read_bytes(), content_type="text/html", charset="utf-8",
                        headers=_headers(request))


async def script(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "inbox.js").read_bytes(), content_type="text/javascript", charset="utf-8",
                        headers=_headers(request))


def url(port: int, token: str, host: str = "127.0.0.1") -> str:
    """The inbox page's address signed in with ``token``."""
    return f"http://{host}:{port}/inbox#token={token}"
