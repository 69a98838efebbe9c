"""The page: ``static/index.html``, its script ``static/dashboard.js`` and its style sheet
``static/dashboard.css``, shipped in the package and served as they are (no build step, no
template: nothing from a source is ever put into the HTML; the script fills the page from the
JSON API with ``textContent`` only).

:data:`CONTENT_SECURITY_POLICY` allows nothing but these files and the API on the same origin:
no inline script or style, no other origin, no frames, no forms.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
"""URL path -> (file in ``static/``, media type)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def asset(path: str) -> tuple[bytes, str]:
    """The bytes and media type of the asset served at URL ``path``. :raises KeyError: no such asset."""
    name, media_type = ASSETS[path]
    return (files("swarmbus.dashboard") / "static" / name).read_bytes(), media_type
