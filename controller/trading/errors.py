"""How the order desk says no: the refusals and outages a face turns into an answer (the web API: 409/422 for a
refused order, 503 when the exchange is down or not configured). Small on purpose: the web imports it through
its backend protocol without importing the desk."""

from __future__ import annotations


class OrderRefused(Exception):
    """An order the site will not send (or the exchange refused): `status` is the HTTP code to answer with."""

    def __init__(self, reason: str, period: str | None = None, limit: str | None = None, status: int = 409):
        super().__init__(reason)
        self.reason = reason
        self.period = period
        self.limit = limit
        self.status = status


class ExchangeDown(Exception):
    """The exchange could not be reached; nothing was sent."""


class ExchangeNotConfigured(ExchangeDown):
    """No EXCHANGE_API_KEY: this site may receive trades but cannot place orders (answered 503)."""

    def __init__(self) -> None:
        super().__init__(
            "EXCHANGE_API_KEY is not set: this site has no key to present to the exchange, so it "
            "cannot place or cancel orders (it still receives trades); set EXCHANGE_API_KEY in the "
            "environment or env file and restart"
        )
