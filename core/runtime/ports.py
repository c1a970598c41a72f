"""Loopback port helpers for builders that run instances on the host."""

from __future__ import annotations

import asyncio
import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now. Another process may still take it before the caller binds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def wait_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on ``host:port``; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
        except (OSError, asyncio.TimeoutError):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        else:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            return True
