"""The REST listening socket: connections accepted on it must have Nagle's algorithm off, or
every keep-alive response after the first waits ~40 ms for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from service.server import listen


async def accepted_nodelay() -> int:
    sock = listen("127.0.0.1", 0)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    port = sock.getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        value = await asyncio.wait_for(seen, 5)
        writer.close()
        return value
    finally:
        server.close()
        await server.wait_closed()


def test_accepted_connections_have_nodelay() -> None:
    assert asyncio.run(accepted_nodelay()) != 0


def test_listen_binds_a_free_port_and_reports_it() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
