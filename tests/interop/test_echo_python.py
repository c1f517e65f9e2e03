"""Python `websockets` (an independent RFC 6455 client) against tether's diagnostic `/echo`.

The endpoint comes from TETHER_ECHO_URL (ws://HOST:PORT/echo); scripts/tests/30-interop.sh starts
a tether node and sets it. Without it every test fails: this suite never skips.
"""

import asyncio
import os
import struct
import urllib.parse

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

TIMEOUT_S = 10
LARGE_BYTES = 1 << 19  # 512 KiB: half the default message limit (1 MiB), far over one read.


@pytest.fixture
def url():
    value = os.environ.get("TETHER_ECHO_URL")
    if not value:
        pytest.fail("TETHER_ECHO_URL is not set: run scripts/tests/30-interop.sh")
    return value


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def masked_frame(opcode, payload, fin=True, rsv=0):
    """A client frame built by hand (for violations the client library refuses to send)."""
    mask = b"\x37\xfa\x21\x3d"
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len(payload)]) + mask + masked


async def close_code_after_raw(url, frame):
    """Writes one raw frame and returns the close code the server answers with. No extension is
    offered, so reserved bits are reserved."""
    async with connect(url, compression=None) as ws:
        ws.transport.write(frame)
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None, "server dropped the TCP connection without a close frame"
        return closed.value.rcvd.code


def test_text_echo(url):
    async def body():
        async with connect(url) as ws:
            for text in ["hello", "", "ünïcødé ✓ 𝄞", "x" * 125, "y" * 126, "z" * 65536]:
                await ws.send(text)
                echoed = await ws.recv()
                assert isinstance(echoed, str)
                assert echoed == text

    run(body())


def test_binary_echo(url):
    async def body():
        async with connect(url) as ws:
            for data in [bytes(range(256)), b"", b"\x00" * 70000]:
                await ws.send(data)
                echoed = await ws.recv()
                assert isinstance(echoed, bytes)
                assert echoed == data

    run(body())


def test_fragmented_messages_echo_as_one(url):
    async def fragments(parts):
        for part in parts:
            yield part

    async def body():
        async with connect(url) as ws:
            text_parts = ["frag", "ment", "ed ", "ü", ""]
            await ws.send(fragments(text_parts))
            assert await ws.recv() == "".join(text_parts)

            binary_parts = [b"\x01\x02", b"", b"\x03" * 1000, b"\xff"]
            await ws.send(fragments(binary_parts))
            assert await ws.recv() == b"".join(binary_parts)

            # A ping between fragments is answered and does not break the message.
            async def with_ping():
                yield "before "
                pong = await ws.ping(b"mid")
                yield "after"
                await pong

            await ws.send(with_ping())
            assert await ws.recv() == "before after"

    run(body())


def test_large_message(url):
    async def body():
        async with connect(url, max_size=4 * LARGE_BYTES) as ws:
            data = os.urandom(LARGE_BYTES)
            await ws.send(data)
            assert await ws.recv() == data
            text = "é" * (LARGE_BYTES // 2)
            await ws.send(text)
            assert await ws.recv() == text

    run(body())


def test_ping_gets_pong_with_same_payload(url):
    async def body():
        async with connect(url) as ws:
            for payload in [b"", b"ping-1", bytes(range(125))]:
                pong = await ws.ping(payload)
                await asyncio.wait_for(pong, TIMEOUT_S)
            # The connection still echoes afterwards.
            await ws.send("still here")
            assert await ws.recv() == "still here"

    run(body())


@pytest.mark.parametrize("code,reason", [(1000, ""), (1001, "going away"), (4000, "app code")])
def test_close_handshake_completes(url, code, reason):
    async def body():
        ws = await connect(url)
        await ws.send("before close")
        assert await ws.recv() == "before close"
        await ws.close(code, reason)
        await ws.wait_closed()
        assert ws.close_code in (code, 1000), f"server answered {ws.close_code} to {code}"
        assert ws.protocol.close_rcvd is not None, "no close frame from the server"

    run(body())


def test_reserved_opcode_is_closed_with_1002(url):
    assert run(close_code_after_raw(url, masked_frame(0x3, b"x"))) == 1002


def test_reserved_bits_without_extension_are_closed_with_1002(url):
    assert run(close_code_after_raw(url, masked_frame(0x1, b"x", rsv=0b100))) == 1002


def test_fragmented_control_frame_is_closed_with_1002(url):
    assert run(close_code_after_raw(url, masked_frame(0x9, b"p", fin=False))) == 1002


def test_invalid_utf8_text_is_closed_with_1007(url):
    assert run(close_code_after_raw(url, masked_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80"))) == 1007


def test_invalid_close_code_is_closed_with_1002(url):
    assert run(close_code_after_raw(url, masked_frame(0x8, struct.pack("!H", 999)))) == 1002


def test_unknown_path_is_refused_with_404(url):
    async def body():
        parts = urllib.parse.urlsplit(url)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(parts._replace(path="/no-such-endpoint").geturl()):
                pass
        assert refused.value.response.status_code == 404

    run(body())
