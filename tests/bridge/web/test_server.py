"""The dashboard's HTTP server and MQTT-over-WebSocket relay, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.config import CommonSettings, ConfigError, load_settings
from bridge.web import DashboardServer, WebUnit, dashboard, parse_web_address
from bridge.web.server import BrokerAddress
from tests.broker import USERS, Mosquitto, free_port


def mqtt_connect(user: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with user and password (what the page sends, minus v5)."""

    def s(text: str) -> bytes:
        return struct.pack("!H", len(text)) + text.encode()

    body = s("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30) + s("") + s(user) + s(password)
    return bytes([0x10, len(body)]) + body


@asynccontextmanager
async def dashboard_on(port: int, **kw: int) -> AsyncIterator[DashboardServer]:
    server = DashboardServer("127.0.0.1", 0, BrokerAddress("127.0.0.1", port), **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def test_serves_the_page_its_assets_and_the_base_topic() -> None:
    server = DashboardServer("127.0.0.1", 0, BrokerAddress("127.0.0.1", 1), base_topic="site-7/cb")
    await server.start()
    try:
        url = server.url
        status, headers, body = await asyncio.to_thread(get, url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert (
            b'src="mqtt.js"' in body and "default-src 'self'" in headers["Content-Security-Policy"]
        )
        for path, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
            status, headers, body = await asyncio.to_thread(get, url + path)
            assert status == 200 and headers["Content-Type"].startswith(ctype) and body
        status, _, body = await asyncio.to_thread(get, url + "config.json")
        assert status == 200 and b'"base_topic": "site-7/cb"' in body
        for bad in ("../pyproject.toml", "static/app.js", "server.py", "%2e%2e/config.py"):
            status, _, _ = await asyncio.to_thread(get, url + bad)
            assert status == 404, bad
    finally:
        await server.close()


async def test_relay_carries_mqtt_to_the_broker_with_the_browsers_own_user(
    broker: Mosquitto,
) -> None:
    async with (
        dashboard_on(broker.port) as server,
        connect(server.url.replace("http", "ws") + "mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        assert ws.subprotocol == "mqtt"
        # Split across two WebSocket messages: MQTT is a byte stream, the relay must not care.
        packet = mqtt_connect("monitor", USERS["monitor"])
        await ws.send(packet[:5])
        await ws.send(packet[5:])
        assert await ws.recv() == b"\x20\x02\x00\x00"  # CONNACK, accepted
        assert server.active == 1
    async with (
        dashboard_on(broker.port) as server,
        connect(server.url.replace("http", "ws") + "mqtt", subprotocols=["mqtt"]) as ws,  # type: ignore[list-item]
    ):
        await ws.send(mqtt_connect("monitor", "wrong"))
        assert await ws.recv() == b"\x20\x02\x00\x05"  # not authorized: the broker decides
        with pytest.raises(ConnectionClosed):  # the broker hangs up, and so does the relay
            await ws.recv()


async def test_relay_is_bounded_and_refuses_what_it_cannot_carry(broker: Mosquitto) -> None:
    async with dashboard_on(broker.port, max_connections=1, max_message=1024) as server:
        ws_url = server.url.replace("http", "ws") + "mqtt"
        async with connect(ws_url, subprotocols=["mqtt"]) as first:  # type: ignore[list-item]
            await first.send(mqtt_connect("monitor", USERS["monitor"]))
            assert await first.recv() == b"\x20\x02\x00\x00"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url, subprotocols=["mqtt"]):  # type: ignore[list-item]
                    pass
            assert refused.value.response.status_code == 503
            await first.send(b"\x30" + b"\x00" * 2000)  # beyond max_message: closed, 1009
            with pytest.raises(ConnectionClosed) as closed:
                await first.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        async with connect(ws_url, subprotocols=["mqtt"]) as ws:  # type: ignore[list-item]
            await ws.send("CONNECT as text")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


async def test_cross_origin_websocket_is_refused(broker: Mosquitto) -> None:
    async with dashboard_on(broker.port) as server:
        ws_url = server.url.replace("http", "ws") + "mqtt"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        host = ws_url.split("/")[2]
        async with connect(ws_url, origin=f"http://{host}") as ws:  # type: ignore[arg-type]
            await ws.send(mqtt_connect("monitor", USERS["monitor"]))
            assert await ws.recv() == b"\x20\x02\x00\x00"


async def test_unreachable_broker_closes_the_websocket_with_a_reason() -> None:
    async with (
        dashboard_on(free_port()) as server,
        connect(server.url.replace("http", "ws") + "mqtt") as ws,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "broker unreachable")
        assert server.relayed == 1


def test_web_address_and_option() -> None:
    assert parse_web_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_web_address("[::1]:80") == ("::1", 80)
    assert parse_web_address(":8080") == ("0.0.0.0", 8080)
    for bad in ("8080", "host:", "host:99999", "host:http"):
        with pytest.raises(ValueError):
            parse_web_address(bad)
    with pytest.raises(ConfigError, match="option web"):
        load_settings(CommonSettings, {"web": "localhost"})
    settings = load_settings(CommonSettings, {"web": "127.0.0.1:0", "mqtt": "mqtts://b:8884"})
    unit = WebUnit(settings)
    assert (unit.server.broker.host, unit.server.broker.port) == ("b", 8884)
    assert unit.server.broker.tls is not None
    assert load_settings(CommonSettings, {}).web == ""  # off unless asked for


async def test_dashboard_unit_follows_the_option_and_the_demo_may_move_port() -> None:
    async with dashboard(load_settings(CommonSettings, {})) as off:
        assert off is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = load_settings(CommonSettings, {"web": f"127.0.0.1:{taken.getsockname()[1]}"})
        with pytest.raises(OSError):
            async with dashboard(busy):
                pass
        async with dashboard(busy, fallback_port=True) as unit:  # the demo's default port
            assert unit is not None
            assert unit.server.addresses[0][1] not in (0, taken.getsockname()[1])
            status, _, _ = await asyncio.to_thread(get, unit.server.url)
            assert status == 200
