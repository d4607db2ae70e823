"""A minimal DNY server for the simulator tests: answers 0x20/0x21/0x22/0x03 (and the legacy
0x01/0x04) with the codec and records everything it receives, with an asyncio.Event to await
each kind of arrival."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

from protocol import (
    Frame,
    Iccid,
    OrderConfirmation,
    OrderConfirmationReply,
    ResultReply,
    Sender,
    StreamDecoder,
    TimeReply,
    decode_payload,
    encode_frame,
    encode_payload,
)

ANSWERED = (0x20, 0x21, 0x22, 0x03, 0x01, 0x04)


@dataclass
class Connection:
    writer: asyncio.StreamWriter
    first: bytes = b""
    iccid: str | None = None
    items: list[object] = field(default_factory=list)


@dataclass
class FakeServer:
    """`answer` lists the commands it acknowledges; clear it to play an unresponsive server."""

    answer: set[int] = field(default_factory=lambda: set(ANSWERED))
    frames: list[Frame] = field(default_factory=list)
    by_device: dict[int, list[Frame]] = field(default_factory=lambda: defaultdict(list))
    connections: list[Connection] = field(default_factory=list)
    writers: dict[int, asyncio.StreamWriter] = field(default_factory=dict)
    registered: set[int] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.writer.close()
        await self._server.wait_closed()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_for(self, predicate, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
        """Return once `predicate()` holds; re-checked after every received item."""
        async with asyncio.timeout(within):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()

    def of(self, command: int, physical_id: int | None = None) -> list[Frame]:
        source = self.frames if physical_id is None else self.by_device[physical_id]
        return [f for f in source if f.command == command]

    def send(self, physical_id: int, message_id: int, command: int, payload: object) -> None:
        data = encode_payload(payload)  # type: ignore[arg-type]
        self.writers[physical_id].write(encode_frame(physical_id, message_id, command, data))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer)
        self.connections.append(conn)
        decoder = StreamDecoder()
        try:
            while data := await reader.read(65536):
                if not conn.first:
                    conn.first = data[:20]
                for item in decoder.feed(data):
                    conn.items.append(item)
                    if isinstance(item, Iccid):
                        conn.iccid = item.value
                    elif isinstance(item, Frame):
                        self._on_frame(item, writer)
                self.arrived.set()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _on_frame(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        self.frames.append(frame)
        self.by_device[frame.physical_id].append(frame)
        self.writers[frame.physical_id] = writer
        if frame.command not in self.answer:
            return
        # Decoding checks that the simulator's payloads are valid for the codec.
        payload = decode_payload(frame.command, frame.data, Sender.DEVICE)
        if frame.command == 0x20:
            self.registered.add(frame.physical_id)
        reply: object = TimeReply(int(time.time())) if frame.command == 0x22 else ResultReply(0)
        if isinstance(payload, OrderConfirmation):
            reply = OrderConfirmationReply(payload.port, 0)
        writer.write(
            encode_frame(
                frame.physical_id,
                frame.message_id,
                frame.command,
                encode_payload(reply),  # type: ignore[arg-type]
            )
        )
