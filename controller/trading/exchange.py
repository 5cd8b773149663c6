"""The production exchange client: async client of the exchange REST API (the real one, or the simulator that
stands in for it), signing every request. It lives in the controller, not in simulators/: the site trades with it.

Errors are typed: ExchangeUnavailable (network, timeout, 5xx: the caller may serve stale data; its subclass
ExchangeNotReached when no connection was made, so nothing was sent),
ExchangeRejected (4xx; `.body` has the server's JSON, e.g. the rejected order), and its subclass
ExchangeAuthError (401).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable
from urllib.parse import urlencode

import httpx

from controller.signing import request_signature


class ExchangeError(Exception):
    def __init__(self, message: str, status_code: int | None = None, body: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.body = body

    @property
    def detail(self) -> str:
        if isinstance(self.body, dict) and "detail" in self.body:
            return str(self.body["detail"])
        return str(self)


class ExchangeUnavailable(ExchangeError):
    pass


class ExchangeNotReached(ExchangeUnavailable):
    """No connection could be made (refused, connect timeout, TLS handshake): the request was never sent."""


class ExchangeRejected(ExchangeError):
    """The exchange answered 4xx: the request was refused, with `detail` saying why."""


class ExchangeAuthError(ExchangeRejected):
    """401: unknown key, bad signature, stale timestamp or replay."""


class ExchangeClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        hmac_secret: str,
        timeout_s: float = 5.0,
        now: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.hmac_secret = hmac_secret
        self._now = now
        self._last_ts = 0.0
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "ExchangeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _timestamp(self) -> str:
        # strictly increasing, microsecond resolution: two identical requests never share a signature
        ts = max(self._now(), self._last_ts + 1e-6)
        self._last_ts = ts
        return f"{ts:.6f}"

    def signed_headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        """Headers for one request; `path` includes the query string if there is one. Without an API key (a
        site that only receives trades) none: the exchange serves its public market data, refuses the rest."""
        if not self.api_key:
            return {}
        ts = self._timestamp()
        return {
            "X-API-Key": self.api_key,
            "X-Timestamp": ts,
            "X-Signature": request_signature(self.hmac_secret, ts, method, path, body),
        }

    async def request(self, method: str, path: str, body: dict | None = None) -> Any:
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = self.signed_headers(method, path, content)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            r = await self._http.request(method, path, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ExchangeNotReached(f"{method} {self.base_url}{path}: {type(e).__name__}: {e}") from e
        except httpx.HTTPError as e:
            raise ExchangeUnavailable(f"{method} {self.base_url}{path}: {type(e).__name__}: {e}") from e
        try:
            data = r.json()
        except ValueError:
            data = r.text
        if r.status_code >= 500:
            raise ExchangeUnavailable(f"{method} {path}: HTTP {r.status_code}", r.status_code, data)
        if r.status_code == 401:
            raise ExchangeAuthError(f"{method} {path}: unauthorised: {_detail(data)}", 401, data)
        if r.status_code >= 400:
            raise ExchangeRejected(f"{method} {path}: HTTP {r.status_code}: {_detail(data)}", r.status_code, data)
        return data

    async def place_order(self, order: dict) -> dict:
        """POST /api/orders; the order as the exchange holds it (+ `trades` it made). A refused order raises
        ExchangeRejected (409 gate closed: `.body["order"]`; 422 bad fields)."""
        return await self.request("POST", "/api/orders", order)

    async def cancel_order(self, order_id: str) -> dict:
        return await self.request("DELETE", f"/api/orders/{order_id}")

    async def order(self, order_id: str) -> dict:
        return await self.request("GET", f"/api/orders/{order_id}")

    async def order_by_client_id(self, client_order_id: str) -> dict | None:
        """The caller's order placed with `client_order_id`, or None if the exchange has none (it never took it)."""
        found = await self.request("GET", "/api/orders?" + urlencode({"client_order_id": client_order_id}))
        # anything but [] or [that very order] (an exchange that ignores the filter lists every order) is not an
        # answer to the question: never read it as "not there" or as "this one"
        if (
            not isinstance(found, list)
            or len(found) > 1
            or (found and (not isinstance(found[0], dict) or found[0].get("client_order_id") != client_order_id))
        ):
            raise ExchangeUnavailable(f"GET /api/orders?client_order_id: unexpected answer {str(found)[:200]}")
        return found[0] if found else None

    async def orders(self, status: str | None = None) -> list[dict]:
        """The caller's orders; status "active" = open or partially filled."""
        return await self.request("GET", "/api/orders" + (f"?status={status}" if status else ""))

    async def trades(self) -> list[dict]:
        """The caller's trades with `side`, `order_id`, and (when the exchange publishes) `published`, `ack`."""
        return await self.request("GET", "/api/trades")

    async def market_data(self) -> dict:
        return await self.request("GET", "/api/market-data")

    async def auction(self, day: str) -> dict | None:
        """The day-ahead results of UTC day `day` (YYYY-MM-DD): {day, market, published_at, periods:
        [{period_start, price_eur_mwh}]}; None while they are not published (404)."""
        try:
            return await self.request("GET", f"/api/auction/{day}")
        except ExchangeRejected as e:
            if e.status_code == 404:
                return None
            raise


def _detail(data: Any) -> str:
    return str(data.get("detail")) if isinstance(data, dict) and "detail" in data else str(data)[:200]
