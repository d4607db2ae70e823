"""A real HTTP endpoint on 127.0.0.1 (asyncio server) that answers as it is told.

`script` is consumed one answer per request: `fail` (500), `hang` (reads the request, never
answers), `close` (closes without a response), an int status, or `ok` (200), which is also
the answer once the script is exhausted. Every request is recorded with its exact body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answer: str


class Endpoint:
    def __init__(self, script: list[Any] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[Request] = []
        self.port = 0
        self._new = asyncio.Condition()
        self._hanging: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> list[Request]:
        return [r for r in self.requests if r.answer in ("ok", "200")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        answer = str(self.script.pop(0)) if self.script else "ok"
        async with self._new:
            self.requests.append(Request(method, path, headers, body, answer))
            self._new.notify_all()
        if answer == "hang":
            self._hanging.append(writer)
            return
        if answer != "close":
            status = {"ok": 200, "fail": 500}.get(answer) or int(answer)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        writer.close()

    async def wait(
        self, where: Callable[[list[Request]], bool], timeout: float = 20.0
    ) -> list[Request]:
        async with asyncio.timeout(timeout), self._new:
            await self._new.wait_for(lambda: where(self.requests))
        return self.requests


@contextlib.asynccontextmanager
async def endpoint(script: list[Any] | None = None) -> AsyncIterator[Endpoint]:
    ep = Endpoint(script)
    server = await asyncio.start_server(ep._serve, "127.0.0.1", 0)
    ep.port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield ep
    finally:
        for writer in ep._hanging:
            writer.close()
