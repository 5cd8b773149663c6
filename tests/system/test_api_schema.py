"""schemathesis against the web app's own OpenAPI, served by a real uvicorn (tests/fixtures/web.py) with a valid API
key: every operation, generated valid and invalid input; no 5xx, and every response conforms to the schema
(status code documented, body, content type, headers). Bounded per operation to stay well under a minute."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.fixtures.web import KEYS, SECRET, MemoryBackend, running_web
from web.app import create_app

# examples per operation and generation mode (positive + negative); ~15 operations on 2 busy cores
MAX_EXAMPLES = 40
H = {"X-API-Key": KEYS[0]}
CASES: Counter = Counter()


@pytest.fixture(scope="module")
def web_url():
    """The web app on real uvicorn in its own thread and event loop: schemathesis's tests are synchronous and
    call it over HTTP, so the server must keep running while they block."""
    started: queue.Queue = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        # the fuzzer sends wrong keys on purpose: a lockout would turn later cases into 429s
        async with running_web(cycle_s=0.5, lockout_failures=1_000_000) as w:
            started.put(w.url)
            for _ in range(36_000):  # bounded: at most an hour, normally ends at the module's teardown
                if stop.is_set():
                    break
                await asyncio.sleep(0.1)

    def target() -> None:
        try:
            asyncio.run(serve())
        except BaseException as e:  # hand the failure to the test thread instead of losing it
            started.put(e)

    thread = threading.Thread(target=target, name="web-under-test", daemon=True)
    thread.start()
    try:
        url = started.get(timeout=20)
        if isinstance(url, BaseException):
            raise url
        yield url
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the web server thread did not stop"
        if CASES:
            print(f"\nschemathesis: {sum(CASES.values())} cases passed over {len(CASES)} operations")


@pytest.fixture(scope="module")
def api_schema(web_url):
    # the schema is behind a key too (web.open_docs opens it)
    return schemathesis.openapi.from_url(f"{web_url}/openapi.json", timeout=10, headers=H)


def app_operations() -> dict[str, dict]:
    """ "METHOD /path" -> its OpenAPI operation, for every operation of the app, known at collection time so each
    operation is its own test (the served schema is the same app's: test_served_schema_is_the_apps checks it)."""
    doc = create_app(MemoryBackend(), KEYS, SECRET).openapi()
    return {
        f"{m.upper()} {p}": op for p, ops in doc["paths"].items() for m, op in ops.items() if m.upper() in HTTP_METHODS
    }


HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD"}
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE


def cases() -> list:
    """Valid input for every operation; invalid input where an operation has something to make invalid."""
    out = []
    for label, op in app_operations().items():
        out.append(pytest.param(label, POSITIVE, id=f"{label}-valid"))
        # an unconstrained path string (DELETE /api/orders/{order_id}) has no invalid value to generate
        if op.get("requestBody") or any(prm["in"] != "path" for prm in op.get("parameters", [])):
            out.append(pytest.param(label, NEGATIVE, id=f"{label}-invalid"))
    return out


# schemathesis.pytest's lazy loader (from_fixture) reads pytest's private Function._nodeid, gone in pytest 9.2:
# drive each operation's hypothesis strategy directly, with the same checks.
@pytest.mark.parametrize(("label", "mode"), cases())
def test_api_conforms_to_its_schema(api_schema, label, mode):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served schema"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        # the key goes in unless the case sets the header itself (negative cases try missing and bad keys)
        headers = {} if any(k.lower() == "x-api-key" for k in (case.headers or {})) else H
        # positive_data_acceptance is left out: the schema cannot say everything the API checks (delivery
        # periods on 15-minute boundaries, ISO 8601 times, the pre-trade SoC check), and those refusals are
        # documented 4xx answers, which the other checks validate
        response = case.call_and_validate(headers=headers, timeout=10, excluded_checks=[positive_data_acceptance])
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
        CASES[label] += 1

    check()
    assert CASES[label] > 0, f"{label}: no case ran"


def test_served_schema_is_the_apps(api_schema, web_url):
    """The fuzzed operations are the whole API: the served schema has every operation the app defines and every
    /api route DESIGN.md and issue 6 list."""
    served = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert served == set(app_operations())
    for label in (
        "GET /api/bess-status",
        "GET /api/market-data",
        "GET /api/orders",
        "POST /api/orders",
        "GET /api/trades",
        "POST /api/telemetry",
        "POST /api/mode",
        "GET /api/alarms",
        "GET /api/decisions",
        "GET /api/schedule",
        "GET /healthz",
        "GET /readyz",
    ):
        assert label in served, f"{label} missing from the OpenAPI schema"
