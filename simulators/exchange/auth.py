"""Request authentication of the exchange REST API: API key -> participant, timestamp window, HMAC signature,
and a bounded cache of seen signatures so a captured request cannot be replayed.

Signature: hex(HMAC-SHA256(HMAC_SECRET, timestamp + "\\n" + METHOD + "\\n" + path + "\\n" + body)) as
controller/signing.py computes it. `path` is the URL path; with a query string, the path with `?query` is
checked first and the bare path second (so a client that signs only the path still works; the query of a
GET only filters what the caller may read anyway). X-Timestamp is Unix seconds and may carry a fraction,
which lets a client send the same GET twice in one second without tripping the replay check.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

from controller.signing import verify_request

log = logging.getLogger("bess.exchange.auth")


class AuthError(Exception):
    """Refused request; `reason` goes back to the client with a 401."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ReplayCache:
    """Signatures seen within the timestamp window, bounded in size (oldest evicted first, with a warning)."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0

    def _prune(self, now: float) -> None:
        while self._seen:
            sig, expires = next(iter(self._seen.items()))
            if expires >= now:
                break
            self._seen.popitem(last=False)

    def add(self, signature: str, expires_at: float, now: float) -> bool:
        """Remember `signature` until `expires_at`; False when it was already seen (a replay)."""
        self._prune(now)
        if signature in self._seen:
            return False
        self._seen[signature] = expires_at
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1
            if self.evicted % 1000 == 1:
                log.warning(
                    "replay cache full (%d): evicted an unexpired signature (%d so far)", self.max_entries, self.evicted
                )
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Authenticator:
    def __init__(
        self, participants: dict[str, str], hmac_secret: str, window_s: float = 30.0, replay_max: int = 200_000
    ):
        if not participants:
            raise ValueError("no participants: map at least one API key to a site id")
        self.participants = dict(participants)
        self.hmac_secret = hmac_secret
        self.window_s = window_s
        self.replay = ReplayCache(replay_max)

    @property
    def sites(self) -> set[str]:
        return set(self.participants.values())

    def check(
        self,
        *,
        api_key: str | None,
        timestamp: str | None,
        signature: str | None,
        method: str,
        path: str,
        query: str,
        body: bytes,
        now: float,
    ) -> str:
        """The participant (site id) of an authentic, fresh, first-seen request; else AuthError."""
        if not api_key:
            raise AuthError("missing X-API-Key header")
        site = self.participants.get(api_key)
        if site is None:
            raise AuthError("unknown API key")
        if not timestamp:
            raise AuthError("missing X-Timestamp header")
        try:
            ts = float(timestamp)
        except ValueError:
            raise AuthError("X-Timestamp is not Unix seconds") from None
        if not math.isfinite(ts):
            raise AuthError("X-Timestamp is not Unix seconds")
        skew = ts - now
        if abs(skew) > self.window_s:
            raise AuthError(f"stale timestamp: {skew:+.0f} s from exchange time (window ±{self.window_s:g} s)")
        if not signature:
            raise AuthError("missing X-Signature header")
        candidates = [f"{path}?{query}", path] if query else [path]
        if not any(verify_request(self.hmac_secret, timestamp, method, p, body, signature) for p in candidates):
            raise AuthError("bad signature")
        if not self.replay.add(signature, ts + self.window_s + 1.0, now):
            raise AuthError("replayed request: this signature was already used")
        return site
