"""`/docs`: an interactive API explorer (Swagger UI) over the gateway's /openapi.json.

Swagger UI's static files are in `assets/`, copied from the `swagger-ui-dist` package that
`package.json` and `package-lock.json` pin (`make explorer-assets` refreshes them; a test
checks that they match the locked package). Nothing is loaded from another host, so the
explorer works offline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.responses import FileResponse, HTMLResponse, RedirectResponse

ASSETS = Path(__file__).with_name("assets")
PREFIX = "/docs"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Grace API</title>
  <link rel="icon" type="image/png" href="assets/favicon-32x32.png">
  <link rel="stylesheet" href="assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="assets/swagger-ui-bundle.js"></script>
  <script src="assets/init.js"></script>
</body>
</html>
"""


class Explorer:
    """Serves PREFIX/ (the page) and PREFIX/assets/* ahead of `app`; everything else goes on.

    The web console at /ui is served the same way, from its own page and assets.

    Args:
        app: The application behind it.
        prefix: Where the page is served (`/docs`).
        assets: The directory of its static files (flat: no subdirectories).
        page: The HTML of PREFIX/.
    """

    def __init__(
        self, app: ASGIApp, *, prefix: str = PREFIX, assets: Path = ASSETS, page: str = PAGE
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.assets = assets
        self.page = page
        self.names = frozenset(p.name for p in assets.iterdir() if p.is_file())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        prefix = self.prefix
        if scope["type"] != "http" or not (path == prefix or path.startswith(prefix + "/")):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # the gateway answers 404/405 as usual
            return
        if path == prefix:
            await RedirectResponse(prefix + "/", status_code=308)(scope, receive, send)
        elif path == prefix + "/":
            page = HTMLResponse(self.page, headers={"cache-control": "no-cache"})
            await page(scope, receive, send)
        elif (asset := self._asset(path)) is not None:
            file = FileResponse(asset, headers={"cache-control": "public, max-age=3600"})
            await file(scope, receive, send)
        else:
            await self.app(scope, receive, send)  # the gateway's JSON 404

    def _asset(self, path: str) -> Path | None:
        """The file of PREFIX/assets/NAME (a plain name, no directories), if there is one."""
        name = path.removeprefix(self.prefix + "/assets/")
        if name == path or not name or "/" in name or name.startswith("."):
            return None
        return self.assets / name if name in self.names else None
