"""What the collector's WSGI views share: reading a request body within a size cap."""

from __future__ import annotations

from typing import Any

__all__ = ["read_body"]


def read_body(environ: dict[str, Any], max_body: int) -> bytes | None:
    """The request body, or None if larger than ``max_body``; reads at most ``max_body + 1`` bytes."""
    length = _content_length(environ)
    if length is not None and length > max_body:
        return None
    stream = environ["wsgi.input"]
    if length is not None:
        data = stream.read(length)
    elif environ.get("wsgi.input_terminated"):
        data = stream.read(max_body + 1)
    else:
        data = b""  # PEP 3333: without a length, reading is only safe from terminated input
    return None if len(data) > max_body else data


def _content_length(environ: dict[str, Any]) -> int | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return length if length >= 0 else None
