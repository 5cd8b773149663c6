"""Shared test plumbing: free loopback ports. Layer fixtures live in tests/fixtures/<name>.py."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

# the shared helpers' asserts (checkers such as tests/fixtures/limit_checks.py) report their values on failure as a
# test module's do: pytest rewrites only test modules and conftests unless told
pytest.register_assert_rewrite("tests.fixtures", "tests.strategies")

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this test process has not handed out
    before: the kernel may give a port just released again, and a site file whose web and SCADA faces got the
    same port is (rightly) refused by the config check (CI caught it: web.port == scada.opcua.port)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port that was not handed out already")


@pytest.fixture
def port() -> int:
    return free_port()


async def eventually(read, check, *, within_s: float = 3.0, every_s: float = 0.02):
    """Await `read()` until `check(value)` holds (bounded in time and count); returns the value, or fails naming the
    last one. The async reads' twin of tests.fixtures.controller.wait_for."""
    deadline = time.monotonic() + within_s
    value = None
    for _ in range(int(within_s / every_s) + 1):
        value = await read()
        if check(value):
            return value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(every_s)
    raise AssertionError(f"condition not met within {within_s} s; last value {value!r}")
