"""`/ui`: the web console, a plain ES-module application over the gateway's own routes.

Its files are in `assets/` and need no build step: `index.html` is the page, `app.js` and the
modules it imports run in the browser as they are, and nothing is loaded from another host,
so the console works offline. Every call it makes carries the bearer token the operator
signs in with (kept in the tab's sessionStorage), like any other client of the gateway.
"""

from __future__ import annotations

from pathlib import Path

from gateway.explorer import ASGIApp, Explorer

ASSETS = Path(__file__).with_name("assets")
PREFIX = "/ui"


def console(app: ASGIApp) -> Explorer:
    """Serves /ui/ (the page) and /ui/assets/* ahead of `app`; everything else goes on."""
    page = (ASSETS / "index.html").read_text(encoding="utf-8")
    return Explorer(app, prefix=PREFIX, assets=ASSETS, page=page)
