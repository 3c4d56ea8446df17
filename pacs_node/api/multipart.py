"""multipart/related bodies (RFC 2387) as DICOMweb uses them: STOW-RS in, WADO-RS out."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message


class MultipartError(ValueError):
    """The body or its Content-Type is not a usable multipart/related message."""


@dataclass(frozen=True)
class ContentType:
    """A parsed Content-Type header: media type (lower case) and its parameters."""

    media_type: str
    params: dict[str, str]


def parse_content_type(header: str) -> ContentType:
    """Split ``type/subtype; a=b; c="d"`` with the e-mail package's RFC 2045 parser."""
    message = Message()
    message["content-type"] = header
    params = {key.lower(): value for key, value in message.get_params(failobj=[])[1:]}
    return ContentType(message.get_content_type().lower(), params)


def split_related(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: (headers with lower-case names, payload) each.

    Raises
    ------
    MultipartError
        When the boundary never occurs or the closing delimiter is missing.
    """
    if not boundary:
        raise MultipartError("the Content-Type has no boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter):
        start = body.find(b"\r\n" + delimiter)
        if start < 0:
            raise MultipartError("the body does not contain its boundary")
        body = body[start + 2 :]
    chunks = body.split(b"\r\n" + delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    closed = False
    for index, chunk in enumerate(chunks):
        if index == 0:
            chunk = chunk[len(delimiter) :]
        if chunk.startswith(b"--"):  # the close delimiter
            closed = True
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, separator, payload = chunk.partition(b"\r\n\r\n")
        if not separator:
            if head.strip():  # headers only would be "head\r\n\r\n"; a part with no blank line
                raise MultipartError(f"part {index + 1} has no header/body separator")
            continue
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    if not closed:
        raise MultipartError("the body ends without the closing boundary (truncated upload?)")
    return parts


def build_related(
    payloads: Iterable[tuple[bytes, str]], media_type: str
) -> tuple[Iterable[bytes], str]:
    """A multipart/related body streamed part by part, and its Content-Type header.

    ``payloads`` yields (bytes, content type of the part).
    """
    boundary = secrets.token_hex(16)

    def chunks() -> Iterable[bytes]:
        for data, part_type in payloads:
            yield f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("latin-1")
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("latin-1")

    header = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return chunks(), header
