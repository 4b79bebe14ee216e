"""The ``/docs`` page: one self-contained HTML file that renders ``/openapi.json`` (the
calls, with a form to send one) and ``/asyncapi.json`` (the events, commands, publish
topics and sockets, by service: each operation's channel, AMQP exchange and queue, and
message payloads).

The page ships inside the package (``wiremesh/gateway/static/docs.html``) and loads
nothing from elsewhere, so it works with no internet access. Its one script and one style
sheet are inline; the ``Content-Security-Policy`` allows exactly those two (by their
SHA-256) and requests to the gateway itself.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib.resources import files

__all__ = ["docs_page"]


@functools.cache
def docs_page() -> tuple[bytes, bytes]:
    """The page's HTML and the ``Content-Security-Policy`` that goes with it."""
    html = files("wiremesh.gateway").joinpath("static/docs.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, flags=re.S)
    policy = (
        "default-src 'none'; "
        f"script-src {_hashes(scripts)}; style-src {_hashes(styles)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html.encode(), policy.encode()


def _hashes(blocks: list[str]) -> str:
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
        for block in blocks
    )
