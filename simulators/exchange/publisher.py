"""Publishes each executed trade of a site, signed, on `bess/{site}/trades` (QoS 1) and records the site's acks
from `bess/+/trades/ack`.

paho-mqtt 2.x with its network loop in its own thread. A trade stays in an in-memory pending map until its
PUBACK arrives; pending trades are re-sent on reconnect and every `retry_s` while unacknowledged, so a broker
that is briefly down loses nothing (a restart of the simulator itself does: acceptable for a simulator).
Re-sends can duplicate a trade on the wire; the site de-duplicates by `trade_id` (DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from controller.clock import iso
from controller.config import parse_mqtt_url
from controller.signing import sign_message

log = logging.getLogger("bess.exchange.publisher")

ACK_TOPIC = "bess/+/trades/ack"


def trades_topic(site: str) -> str:
    return f"bess/{site}/trades"


@dataclass
class _Pending:
    site: str
    trade_id: str
    payload: bytes
    mid: int | None = None
    sent_at: float | None = None  # time.monotonic() of the last send
    attempts: int = 0


class TradePublisher:
    def __init__(
        self, mqtt_url: str, hmac_secret: str, client_id: str | None = None, retry_s: float = 5.0, now=time.time
    ):
        self.url = parse_mqtt_url(mqtt_url)
        self.hmac_secret = hmac_secret
        self.retry_s = retry_s
        self._now = now
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._by_mid: dict[int, tuple[str, str]] = {}
        self._early_acks: set[int] = set()
        self._published: set[tuple[str, str]] = set()
        self._acks: dict[tuple[str, str], dict] = {}
        self.connected = threading.Event()
        self.sent_total = 0
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"bess-exchange-sim-{id(self):x}",
            protocol=mqtt.MQTTv311,
        )
        if self.url.username:
            self.client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (the loop thread retries until the broker is there)."""
        self.client.connect_async(self.url.host, self.url.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # ---- paho callbacks (network thread) ---------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect to %s:%d refused: %s", self.url.host, self.url.port, reason_code)
            return
        sock = client.socket()
        if sock is not None:
            # paho leaves Nagle on: a PUBACK could wait ~40 ms for the delayed ACK (LIBRARY-NOTES.md)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(ACK_TOPIC, qos=1)
        self.connected.set()
        log.info("MQTT connected to %s:%d", self.url.host, self.url.port)
        with self._lock:
            for p in self._pending.values():
                p.sent_at = None
        self.flush()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        log.warning("MQTT disconnected (%s); %d trades pending", reason_code, len(self._pending))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # never call paho while holding our lock here: paho holds its own lock while calling us
        with self._lock:
            key = self._by_mid.pop(mid, None)
            if key is None:
                self._early_acks.add(mid)
                return
            self._done(key)

    def _done(self, key: tuple[str, str]) -> None:
        if self._pending.pop(key, None) is not None:
            self._published.add(key)

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            log.warning("ack on unexpected topic %s ignored", msg.topic)
            return
        site = parts[1]
        try:
            ack = json.loads(msg.payload)
            trade_id = ack["trade_id"]
            if not (trade_id is None or isinstance(trade_id, str)) or not isinstance(ack.get("accepted"), bool):
                raise ValueError("trade_id must be a string or null and accepted a bool")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("bad ack from %s ignored: %s", site, e)
            return
        if trade_id is None:  # the site could not read a trade_id from something on its trades topic
            log.warning("site %s rejected a message without a readable trade_id: %s", site, ack.get("reason"))
            return
        with self._lock:
            self._acks[(site, trade_id)] = {
                "accepted": ack["accepted"],
                "reason": ack.get("reason"),
                "ts": ack.get("ts"),
                "received_at": iso(self._now()),
            }
        log.info("ack from %s for %s: accepted=%s %s", site, trade_id, ack["accepted"], ack.get("reason") or "")

    # ---- publishing (any thread) ------------------------------------------------------------------------
    def publish_trade(self, site: str, trade: dict) -> None:
        """Queue `trade` (DESIGN.md's Trade shape) for `site`, bound to it (`site`, under the signature, so it
        cannot be replayed to another site), signed with `ts` and `sig`, and send it."""
        message = sign_message({**trade, "site": site, "ts": iso(self._now())}, self.hmac_secret)
        key = (site, trade["trade_id"])
        with self._lock:
            self._pending[key] = _Pending(site, trade["trade_id"], json.dumps(message).encode())
        self._send(key)

    def _send(self, key: tuple[str, str]) -> None:
        if not self.connected.is_set():
            return
        with self._lock:
            p = self._pending.get(key)
            if p is None:
                return
            payload, topic = p.payload, trades_topic(p.site)
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish of trade %s to %s failed (rc %s); will retry", key[1], topic, info.rc)
            return
        with self._lock:
            p = self._pending.get(key)
            if p is None:
                return
            p.mid, p.sent_at, p.attempts = info.mid, time.monotonic(), p.attempts + 1
            self.sent_total += 1
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._done(key)
            else:
                self._by_mid[info.mid] = key

    def flush(self) -> None:
        """Send every pending trade not sent in the last `retry_s` (unsent ones included)."""
        if not self.connected.is_set():
            return
        cutoff = time.monotonic() - self.retry_s
        with self._lock:
            due = [k for k, p in self._pending.items() if p.sent_at is None or p.sent_at < cutoff]
        for key in due:
            self._send(key)

    # ---- state ------------------------------------------------------------------------------------------
    def delivery(self, site: str, trade_id: str) -> dict:
        """`{published, ack}`: PUBACK received for the trade, and the site's ack (None until it arrives)."""
        key = (site, trade_id)
        with self._lock:
            return {"published": key in self._published, "ack": self._acks.get(key)}

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def acks(self) -> dict[tuple[str, str], dict]:
        with self._lock:
            return dict(self._acks)
