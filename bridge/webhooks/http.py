"""One HTTP/1.1 POST over asyncio streams (http:// and https://), stdlib only.

A webhook needs one request per connection and the response's status line, nothing more;
the standard library's asyncio streams and ssl do that in a page, where an HTTP client
library would be a new dependency for edge gateways to install. The response body is not
read (the request says `Connection: close`); the head is bounded in size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from urllib.parse import unquote, urlsplit

MAX_HEAD_BYTES = 16_384


class WebhookHttpError(Exception):
    """The endpoint could not be reached or answered something that is not HTTP."""


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """POST `body` to `url`; returns the response's status code. Raises TimeoutError after
    `timeout` seconds (connect to response head), WebhookHttpError or OSError otherwise."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if ":" not in host else f"[{host}]"
    if parts.port is not None:
        host_header += f":{parts.port}"
    head = {
        "Host": host_header,
        "User-Agent": "chargebridge-webhook",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **headers,
    }
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        head["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
    context = (ssl_context or ssl.create_default_context()) if https else None
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, limit=MAX_HEAD_BYTES
        )
        try:
            writer.write(request.encode("latin-1") + b"\r\n" + body)
            await writer.drain()
            try:
                status_line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                raise WebhookHttpError("no HTTP response") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    fields = status_line.decode("latin-1").split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise WebhookHttpError(f"not an HTTP response: {status_line[:80]!r}")
    return int(fields[1])
