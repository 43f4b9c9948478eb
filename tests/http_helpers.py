"""For tests that serve the middleware with wsgiref's server."""

from __future__ import annotations

from typing import Any
from wsgiref.simple_server import WSGIRequestHandler


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
