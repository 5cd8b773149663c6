"""Authentication of the web face: API keys (every configured key valid, compared in constant time), the
dashboard's signed session cookie, the expiring websocket token, and the per-client lockout after repeated
failures. Pure logic with an injectable monotonic/wall clock; no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable


def fingerprint(api_key: str) -> str:
    """A short, non-reversible name for a key, for the audit log and logs (never log the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class ApiKeys:
    """The set of valid keys: full-access keys (API_KEY) and read-only keys (API_KEY_READ). Every candidate is
    compared with every key with hmac.compare_digest, so the time taken says nothing about which key, or which
    prefix, was close, nor whether it is a read key."""

    def __init__(self, keys: list[str], read_keys: list[str] | tuple[str, ...] = ()):
        cleaned = [k.strip() for k in keys if k and k.strip()]
        if not cleaned:
            raise ValueError("API_KEY: at least one API key is required")
        read = [k.strip() for k in read_keys if k and k.strip()]
        if set(read) & set(cleaned):
            raise ValueError("API_KEY_READ: a key may not be in both API_KEY and API_KEY_READ")
        self._keys = [k.encode() for k in cleaned + read]
        self._fingerprints = {fingerprint(k) for k in cleaned + read}
        self._writers = {fingerprint(k) for k in cleaned}

    def check(self, candidate: str | None) -> str | None:
        """The key's fingerprint if `candidate` is one of the keys, else None."""
        if not candidate:
            return None
        c = candidate.encode("utf-8", "surrogatepass")
        found = None
        for k in self._keys:  # no early exit: constant work whatever matches
            if hmac.compare_digest(c, k):
                found = k
        return fingerprint(found.decode()) if found is not None else None

    def known_fingerprint(self, fp: str) -> bool:
        return fp in self._fingerprints

    def can_write(self, fp: str) -> bool:
        """True for a key from API_KEY; False for a read-only key (or one no longer valid)."""
        return fp in self._writers


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenError(Exception):
    """A token that is malformed, forged (`forged=True`) or expired / revoked (`forged=False`)."""

    def __init__(self, reason: str, forged: bool):
        super().__init__(reason)
        self.reason = reason
        self.forged = forged


class Signer:
    """Signed, expiring tokens `b64url(json payload).hex(HMAC-SHA256)` for one purpose. The key is derived
    from the web's session secret (the daemon's random key, web/session_key.py) and the purpose, so a websocket
    token is never a valid session cookie or vice versa."""

    def __init__(self, secret: str | bytes, purpose: str, wall: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("session secret: a secret is required to sign web tokens")
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = hmac.new(raw, f"bess-edge web {purpose}".encode(), hashlib.sha256).digest()
        self._wall = wall

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, ttl_s: float, **claims: str) -> tuple[str, dict]:
        payload = {"exp": round(self._wall() + ttl_s, 3), "nonce": secrets.token_hex(12), **claims}
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(body)}", payload

    def verify(self, token: str | None) -> dict:
        if not token or len(token) > 1024 or token.count(".") != 1:
            raise TokenError("malformed token", forged=bool(token))
        body, mac = token.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            raise TokenError("bad token signature", forged=True)
        try:
            payload = json.loads(_unb64(body))
            exp = float(payload["exp"])
            nonce = str(payload["nonce"])
        except (ValueError, KeyError, TypeError) as e:  # signed by us, so this is a bug, not an attack
            raise TokenError(f"unreadable token ({e})", forged=False) from e
        if exp <= self._wall():
            raise TokenError("token expired", forged=False)
        payload["nonce"] = nonce
        return payload


class NonceSet:
    """Nonces seen (used websocket tokens, logged-out sessions) until their expiry; bounded."""

    def __init__(self, max_items: int = 100_000, wall: Callable[[], float] = time.time):
        self._items: OrderedDict[str, float] = OrderedDict()
        self._max = max_items
        self._wall = wall

    def add(self, nonce: str, exp: float) -> None:
        self._prune()
        self._items[nonce] = exp
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def __contains__(self, nonce: str) -> bool:
        return nonce in self._items

    def _prune(self) -> None:
        now = self._wall()
        stale = [n for n, exp in self._items.items() if exp <= now]
        for n in stale:
            del self._items[n]


@dataclass
class _Client:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class Lockout:
    """After `max_failures` failed attempts within `lockout_s` from one client, refuse that client for
    `lockout_s`. Bounded memory: at most `max_clients` tracked, the least recently seen forgotten first."""

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ):
        if max_failures < 1 or lockout_s <= 0:
            raise ValueError("lockout: max_failures >= 1 and lockout_s > 0 required")
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self._mono = monotonic
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._max_clients = max_clients

    def retry_after_s(self, client: str) -> float:
        """Seconds this client stays locked out (0: not locked)."""
        c = self._clients.get(client)
        if c is None:
            return 0.0
        return max(0.0, c.locked_until - self._mono())

    def failure(self, client: str) -> bool:
        """Record a failure; True if it locks the client out now."""
        now = self._mono()
        c = self._clients.pop(client, None) or _Client()
        self._clients[client] = c  # most recently seen last
        c.failures = [t for t in c.failures if now - t < self.lockout_s] + [now]
        locked = len(c.failures) >= self.max_failures
        if locked:
            c.locked_until = now + self.lockout_s
            c.failures.clear()
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)
        return locked

    def success(self, client: str) -> None:
        c = self._clients.get(client)
        if c is not None and c.locked_until <= self._mono():
            del self._clients[client]
