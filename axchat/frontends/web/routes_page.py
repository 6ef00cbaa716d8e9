"""The chat page: static files shipped in the package, no build step, no CDN."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")

# The page loads only its own files (no inline script or style, no CDN) and talks only
# to this bridge, so anything else a reply could smuggle in is refused by the browser;
# and no other site may frame it to trick a click. The icon is an empty `data:` one.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return web.FileResponse(STATIC_DIR / "index.html", headers=headers)


routes.static("/static", STATIC_DIR)
