"""HMAC-SHA256 signatures: MQTT messages (canonical JSON) and exchange REST requests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any


def canonical(message: dict[str, Any]) -> bytes:
    """The message without `sig`, as JSON with sorted keys and no spaces, UTF-8."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_message(message: dict[str, Any], secret: str) -> dict[str, Any]:
    """A copy of `message` with `sig` = hex(HMAC-SHA256(secret, canonical(message)))."""
    sig = hmac.new(secret.encode(), canonical(message), hashlib.sha256).hexdigest()
    return {**{k: v for k, v in message.items() if k != "sig"}, "sig": sig}


def verify_message(message: dict[str, Any], secret: str) -> bool:
    sig = message.get("sig")
    if not isinstance(sig, str):
        return False
    want = hmac.new(secret.encode(), canonical(message), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, sig)


def request_signature(secret: str, timestamp: str, method: str, path: str, body: bytes | str) -> str:
    """Exchange REST signature: hex(HMAC-SHA256(secret, timestamp\\nMETHOD\\npath\\nbody))."""
    if isinstance(body, str):
        body = body.encode()
    msg = f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def verify_request(secret: str, timestamp: str, method: str, path: str, body: bytes | str, signature: str) -> bool:
    return hmac.compare_digest(request_signature(secret, timestamp, method, path, body), signature or "")
