"""The MQTT link to the cloud exchange: telemetry out through the SQLite outbox (QoS 1, seq order, deleted on
PUBACK), signed trades in (verified, stored through `accept_trade`, acked), retained online/offline status.

Threads. paho's network loop runs in its own thread (`loop_start`); a pump thread moves telemetry from the
control cycle's hand-off queue into the outbox and from the outbox to paho, and deletes rows on PUBACK. The
control cycle only appends to a deque (`publish_telemetry`), so it never waits for SQLite or the network.
Trades hop from paho's thread onto the asyncio loop (the controller and its store live there); the incoming
message is PUBACKed (manual ack) only after the trade is stored and acked, so a kill -9 before that makes the
broker redeliver it, and the store's seen-id record keeps a redelivery from being dispatched twice. The ack of
an accepted trade is watched by the pump until the broker PUBACKs it, and the store records that: a trade stored but never
answered (a kill between the two) is answered "accepted" when it comes again; one already answered is a
refused duplicate.

Sharing the GIL with the control cycle. The pump and paho's thread are Python: while they work flat out, the
asyncio loop waits for the GIL after every I/O completion (up to the 5 ms switch interval each), and a 0.1 s
cycle's p99 tripled while a backlog drained. So the drain is cheap per message (rows fetched `PEEK_ROWS` at a
time as the JSON bytes they were stored as, counters per batch, deletes by seq range every `DELETE_ROWS` rows,
`DELETE_EVERY_S` or when nothing is in flight), paho holds at most `WINDOW_MSGS` of our messages, and around
each control cycle the pump goes quiet: `on_cycle` (attached to the cycle's AFTER_WRITE phase) says when the
cycle started and ended, so from `QUIET_LEAD_S` before the next one is due until it ends the pump hands paho
nothing and touches no SQLite, and paho has finished what it held. A cycle woken early (a trade, a period boundary)
just shares the GIL for that once.

Ordering across reconnects. paho keeps the messages it was handed and re-sends them, in order, on reconnect;
the pump hands over nothing new until every message handed before the disconnect has its PUBACK, so the
broker sees seq in order (a re-sent message may arrive twice: a QoS 1 redelivery of the same seq).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import socket
import sqlite3
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.clock import Clock, iso, parse_iso
from controller.config import Secrets, SiteConfig
from controller.cycle.state import PlantState, telemetry
from controller.signing import verify_message
from controller.uplink.outbox import Outbox, OutboxError

log = logging.getLogger("bess.uplink")

TS_WINDOW_S = 300.0  # a signed message's ts may be this far from now, either way
MAX_TRADE_BYTES = 64 * 1024  # a trade is ~300 bytes; anything this big is refused before parsing
WINDOW_MSGS = 60  # telemetry handed to paho and not yet PUBACKed (paho sends 20 at a time):
REFILL_MSGS = WINDOW_MSGS // 2  # enough to keep paho busy, little enough that it is done within QUIET_LEAD_S
PAHO_INFLIGHT = 20  # Mosquitto's default receive maximum; paho does not read it from CONNACK
PEEK_ROWS = 1000  # outbox rows fetched per SELECT
DELETE_ROWS = 1000  # PUBACKed rows deleted per transaction (one seq range when contiguous) ...
DELETE_EVERY_S = 0.25  # ... or after this long, whichever comes first
HANDOFF_ROWS = 500  # hand-off rows stored per pump step (~5 ms): sending goes on in between
HANDOFF_MAX = 100_000  # the cycle->pump queue; only reached if the disk stalls for a day at 1 Hz
PUMP_IDLE_S = 0.05  # the pump's longest sleep when nothing wakes it
EXPIRE_EVERY_S = 1.0
ACK_CONFIRM_MAX_S = 3600.0  # how long an accepted trade's ack is watched for its PUBACK (across reconnects)
QUIET_LEAD_S = 0.003  # the pump goes quiet this long before the next control cycle is due ...
QUIET_MAX_S = 0.05  # ... and resumes this long after it was due even if no on_cycle came
GRID_SLACK_S = 0.002  # a cycle that started this much before it was due was woken early


class UplinkError(Exception):
    """The uplink cannot start (bad TLS files, unusable outbox)."""


class TradeRejected(Exception):
    """An incoming trade message fails the signature, ts window or envelope checks."""


def status_payload(online: bool, ts: float) -> bytes:
    return json.dumps({"online": online, "ts": iso(ts)}, separators=(",", ":")).encode()


def check_envelope(message: Any, secret: str, now_s: float, site: str) -> dict[str, Any]:
    """The trade fields of a signed message for `site` (without `ts`/`sig`/`site`), or TradeRejected with the
    reason. The trade's own fields are checked afterwards by `accept_trade`.

    `site` is covered by `sig`: a trade the exchange signed for another site, replayed on our topic within the
    ts window, names that site and is refused (DESIGN.md "Trades are bound to a site")."""
    if not isinstance(message, dict):
        raise TradeRejected(f"message must be a JSON object (got {type(message).__name__})")
    if not isinstance(message.get("sig"), str):
        raise TradeRejected("sig: missing or not a string")
    if not verify_message(message, secret):  # hmac.compare_digest inside
        raise TradeRejected("sig: bad signature")
    ts = message.get("ts")
    try:
        if isinstance(ts, str):
            ts_s = parse_iso(ts)
        elif isinstance(ts, (int, float)) and not isinstance(ts, bool):
            ts_s = float(ts)
        else:
            raise TradeRejected(f"ts: missing or not an ISO 8601 time (got {type(ts).__name__})")
    except (ValueError, OverflowError) as e:
        raise TradeRejected(f"ts: not a valid time ({e})") from None
    if not math.isfinite(ts_s) or abs(ts_s - now_s) > TS_WINDOW_S:
        raise TradeRejected(f"ts: {ts!r} is more than {TS_WINDOW_S:g} s from now")
    bound = message.get("site")
    if bound is None:
        raise TradeRejected(f"site: missing (a trade must name the site it is for; this is {site!r})")
    if bound != site:
        raise TradeRejected(f"site: the trade is for {str(bound)[:128]!r}, not this site ({site!r})")
    return {k: v for k, v in message.items() if k not in ("ts", "sig", "site")}


class Uplink:
    """One site's MQTT link. `await start()`, `publish_telemetry(payload)` from the cycle, `await stop()`."""

    def __init__(
        self,
        config: SiteConfig,
        secrets: Secrets,
        outbox: Outbox,
        accept_trade: Callable[..., Any],
        clock: Clock | None = None,
        on_ack_confirmed: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.cfg = config.mqtt
        self.secrets = secrets
        self.url = secrets.mqtt
        self.outbox = outbox
        self.accept_trade = accept_trade
        # called (on the pump thread, so it must be thread-safe) with the trade_id when the broker PUBACKs our ack
        # of an accepted trade: the store records it, so a redelivery after a crash before that point is answered
        # "accepted" again, see Controller
        self.on_ack_confirmed = on_ack_confirmed
        self.clock = clock or Clock()
        site = config.site.id
        self.topic_telemetry = f"bess/{site}/telemetry"
        self.topic_status = f"bess/{site}/status"
        self.topic_trades = f"bess/{site}/trades"
        self.topic_ack = f"bess/{site}/trades/ack"
        self.client_id = self.cfg.client_id or f"bess-edge-{site}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._running = False
        self._pump: threading.Thread | None = None
        self._connected = threading.Event()
        # The pump alone owns _inflight, _acked, _cursor and _held. paho's thread only appends PUBACKed mids
        # to _puback_mids, which the pump reads after it registered the mid (same thread), so a PUBACK that
        # beats publish() returning is never lost and no lock is ever held while calling paho.
        self._inflight: dict[int, int] = {}  # paho mid -> seq
        self._puback_mids: collections.deque[int] = collections.deque()
        self._acked: list[int] = []  # seqs PUBACKed, not yet deleted
        # accepted trades' acks awaiting their PUBACK: (trade_id, paho's MQTTMessageInfo, give-up monotonic).
        # The loop appends; the pump (stop() once the pump is gone) takes from the other end: deque ends are
        # thread-safe.
        self._ack_watch: collections.deque[tuple[str, mqtt.MQTTMessageInfo, float]] = collections.deque()
        self._cursor = 0  # the highest seq handed to paho
        self._epoch = 0  # connections made so far (paho's thread increments)
        self._seen_epoch = 0
        self._held = False  # after a reconnect: wait for paho's re-sends before new rows
        self._tokens = 0.0
        self._tokens_mono = time.monotonic()
        self._rows: collections.deque[tuple[int, bytes]] = collections.deque()  # peeked, not yet handed to paho
        self._next_delete = 0.0
        self._quiet = (math.inf, math.inf)  # (from, to) monotonic: the pump leaves the GIL to the cycle
        self._due: float | None = None  # when the next control cycle is due (monotonic), from on_cycle
        self._last_telemetry_mono = -math.inf  # the controller clock's monotonic time of the last telemetry
        self._counters = collections.Counter(
            {
                k: 0
                for k in (
                    "sent",
                    "acked",
                    "connects",
                    "connect_refused",
                    "disconnects",
                    "handoff_dropped",
                    "trades_accepted",
                    "trades_rejected",
                    "trades_failed",
                )
            }
        )
        self.client = self._make_client()

    # ---------------------------------------------------------------- client set-up
    def _make_client(self) -> mqtt.Client:
        v5 = self.cfg.protocol == "5"
        kwargs: dict[str, Any] = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if not v5:
            kwargs["clean_session"] = False
        c = mqtt.Client(**kwargs)
        c.max_inflight_messages_set(PAHO_INFLIGHT)
        c.max_queued_messages_set(0)
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        tls = self.cfg.tls
        if self.url.tls or tls is not None:
            try:
                c.tls_set(
                    ca_certs=tls.ca_file if tls else None,
                    certfile=tls.cert_file if tls else None,
                    keyfile=tls.key_file if tls else None,
                )
            except (OSError, ValueError) as e:
                raise UplinkError(f"mqtt.tls: cannot load certificates: {e}") from e
            if tls is not None and tls.insecure:
                c.tls_insecure_set(True)
        c.reconnect_delay_set(min_delay=1, max_delay=max(1, int(math.ceil(self.cfg.reconnect_max_s))))
        self._set_will(c)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _set_will(self, c: mqtt.Client) -> None:
        c.will_set(self.topic_status, status_payload(False, self.clock.now()), qos=1, retain=True)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect in the background (paho retries with capped backoff until the broker is there)."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt-outbox", daemon=True)
        self._pump.start()
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
        kwargs: dict[str, Any] = dict(keepalive=self.cfg.keepalive_s)
        if self.cfg.protocol == "5":
            kwargs.update(clean_start=False, properties=props)
        self.client.connect_async(self.url.host, self.url.port, **kwargs)
        self.client.loop_start()
        log.info(
            "uplink started",
            extra={
                "broker": f"{self.url.host}:{self.url.port}",
                "client_id": self.client_id,
                "protocol": self.cfg.protocol,
                "outbox_depth": self.outbox.depth,
            },
        )

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Flush the hand-off queue into the outbox, collect the last PUBACKs (up to 1 s), say offline
        (retained), disconnect, close the outbox. Rows not PUBACKed stay for the next start."""
        self._running = False
        self._wake.set()
        pump_alive = False
        if self._pump is not None:
            await asyncio.to_thread(self._pump.join, timeout_s)
            pump_alive = self._pump.is_alive()
            if pump_alive:
                log.error("outbox pump did not stop in time; outbox left open", extra={"timeout_s": timeout_s})
        if not pump_alive:
            # the pump is gone, so its state is ours now
            for _ in range(50):  # bounded: up to 1 s
                if not self._connected.is_set() or len(self._puback_mids) >= len(self._inflight):
                    break
                await asyncio.sleep(0.02)
            try:
                await asyncio.to_thread(self._delete_acked)
            except (OutboxError, sqlite3.Error) as e:
                log.error("last PUBACKed rows not deleted (they will be sent again)", extra={"error": str(e)})
            await asyncio.to_thread(self._confirm_trade_acks, time.monotonic())
        if self._connected.is_set():
            info = self.client.publish(self.topic_status, status_payload(False, self.clock.now()), qos=1, retain=True)
            try:
                await asyncio.to_thread(info.wait_for_publish, 2.0)
            except (RuntimeError, ValueError) as e:
                log.warning("offline status not confirmed before disconnect", extra={"error": str(e)})
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
        if not pump_alive:
            self.outbox.close()
        log.info("uplink stopped", extra={"outbox_depth": self.outbox.depth, "last_seq": self.outbox.last_seq})

    # ---------------------------------------------------------------- state
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def stats(self) -> dict[str, Any]:
        inflight = len(self._inflight)
        return {
            "outbox_depth": self.outbox.depth + len(self._handoff),
            "outbox_dropped": self.outbox.dropped,
            "last_seq": self.outbox.last_seq,
            "inflight": inflight,
            "connected": self.connected,
            **dict(self._counters),
        }

    # ---------------------------------------------------------------- telemetry (control cycle)
    def publish_telemetry(self, payload: dict[str, Any]) -> None:
        """Hand a telemetry payload to the pump; never blocks (a deque append and an event set)."""
        if len(self._handoff) >= HANDOFF_MAX:
            self._handoff.popleft()
            self._counters["handoff_dropped"] += 1
            log.error("telemetry hand-off queue full: the outbox is not keeping up; oldest message dropped")
        self._handoff.append(payload)
        self._wake.set()

    def on_telemetry(self, state: PlantState) -> None:
        """An AFTER_WRITE callback (asyncio loop): the cycle's telemetry payload, at most one per
        `mqtt.telemetry_interval_s` (of the controller's clock; 5 % early is on time)."""
        mono = self.clock.monotonic()
        if mono - self._last_telemetry_mono >= self.config.mqtt.telemetry_interval_s * 0.95:
            self._last_telemetry_mono = mono
            self.publish_telemetry(telemetry(state, self.clock.now()))

    def on_cycle(self, state: PlantState) -> None:
        """An AFTER_WRITE callback (asyncio loop): a cycle just ended, so the next one is due one period
        after this one was due; the pump goes quiet from QUIET_LEAD_S before that until the next call.

        The controller's loop keeps a grid (each cycle due one period after the last was due) unless a cycle
        overran or was woken early. A cycle's start is its process image's time (`state.ts`, from the
        controller's clock); one that started a little late (the loop was busy) is still on the grid."""
        now = time.monotonic()
        period = self.config.cycle.period_s
        if state.ts is not None:
            took = self.clock.real_seconds(self.clock.now() - state.ts)
        else:  # no image yet: the previous cycle's duration is a fair estimate
            took = state.last_duration_s
        start = now - min(max(took, 0.0), period)
        due = start + period
        if self._due is not None and self._due - GRID_SLACK_S <= start < self._due + period / 2:
            due = self._due + period  # on the grid
        due = max(due, now)  # an overrun: the controller starts the next cycle right away
        self._due = due
        self._quiet = (due - QUIET_LEAD_S, due + min(QUIET_MAX_S, period / 2))
        self._wake.set()

    # ---------------------------------------------------------------- pump thread
    def _pump_loop(self) -> None:
        next_expire = time.monotonic()
        while True:
            self._wake.wait(self._pump_sleep_s())
            self._wake.clear()
            running = self._running
            try:
                now = time.monotonic()
                quiet_from, quiet_to = self._quiet
                if running and quiet_from <= now < quiet_to:
                    continue  # the control cycle's turn: no paho, no SQLite
                self._store_handoff()
                self._collect_pubacks()
                if self._acked and (
                    len(self._acked) >= DELETE_ROWS or now >= self._next_delete or not self._inflight or not running
                ):
                    self._delete_acked()
                if now >= next_expire:
                    next_expire = now + EXPIRE_EVERY_S
                    if self.outbox.expire():
                        self._rows.clear()
                if self._ack_watch:
                    self._confirm_trade_acks(now)
                if running:
                    self._send_due(now)
            except (OutboxError, sqlite3.Error) as e:  # busy past the timeout, disk full: rows kept, retried
                log.error("outbox pump step failed; retrying", extra={"error": str(e)})
                time.sleep(PUMP_IDLE_S)
            if not running:
                return

    def _pump_sleep_s(self) -> float:
        now = time.monotonic()
        quiet_from, quiet_to = self._quiet
        if quiet_from <= now < quiet_to:
            return quiet_to - now  # on_cycle wakes the pump as soon as the cycle ends
        if now < quiet_from:
            return min(PUMP_IDLE_S, quiet_from - now)
        return PUMP_IDLE_S

    def _store_handoff(self) -> None:
        batch = []
        while self._handoff and len(batch) < HANDOFF_ROWS:
            batch.append(self._handoff.popleft())
        if batch:
            dropped = self.outbox.dropped
            try:
                self.outbox.append_many(batch)
            except BaseException:
                self._handoff.extendleft(reversed(batch))  # keep their order for the next try
                raise
            if self.outbox.dropped != dropped:
                self._rows.clear()  # the bound dropped the oldest rows: some of those peeked may be gone

    def _collect_pubacks(self) -> None:
        while self._puback_mids:
            seq = self._inflight.pop(self._puback_mids.popleft(), None)
            if seq is not None:  # None: a status or trade-ack publish
                self._acked.append(seq)

    def _delete_acked(self) -> None:
        self._collect_pubacks()
        acked, self._acked = self._acked, []
        self._next_delete = time.monotonic() + DELETE_EVERY_S
        if acked:
            try:
                self.outbox.delete(acked)
            except BaseException:
                self._acked.extend(acked)
                raise
            self._counters["acked"] += len(acked)

    def _confirm_trade_acks(self, now: float) -> None:
        """Call on_ack_confirmed for each accepted trade whose ack the broker has PUBACKed (paho's thread sets
        the MQTTMessageInfo's flag). A watch ends unconfirmed when the publish failed or after ACK_CONFIRM_MAX_S:
        that trade stays unconfirmed, and a redelivery of it is answered "accepted" again, which is true."""
        for _ in range(len(self._ack_watch)):  # the watches there now; the loop may append meanwhile
            trade_id, info, give_up = self._ack_watch.popleft()
            try:
                published = info.is_published()
            except (RuntimeError, ValueError) as e:  # not queued (no connection, queue full)
                log.warning("trade ack not confirmed by the broker", extra={"trade_id": trade_id, "error": str(e)})
                continue
            if published:
                try:
                    self.on_ack_confirmed(trade_id)
                except Exception:  # a bug in the callback must not stop the telemetry pump
                    log.exception("on_ack_confirmed failed", extra={"trade_id": trade_id})
            elif now >= give_up:
                log.warning(
                    "trade ack not confirmed by the broker in time",
                    extra={"trade_id": trade_id, "waited_s": ACK_CONFIRM_MAX_S},
                )
            else:
                self._ack_watch.append((trade_id, info, give_up))

    def _send_due(self, now: float) -> None:
        if not self._connected.is_set():
            return
        epoch = self._epoch
        if epoch != self._seen_epoch:
            self._seen_epoch = epoch
            self._held = bool(self._inflight)
            self._rows.clear()  # rows peeked before the outage may have been dropped by the bound since
        if self._held and self._inflight:
            return
        self._held = False
        room = WINDOW_MSGS - len(self._inflight)
        rate = self.cfg.drain_rate_per_s
        self._tokens = min(max(rate * 0.1, 1.0), self._tokens + (now - self._tokens_mono) * rate)
        self._tokens_mono = now
        n = min(room, int(self._tokens))
        if n <= 0:
            return
        rows = self._rows
        if len(rows) < n:
            after = rows[-1][0] if rows else self._cursor
            rows.extend(self.outbox.peek(after, PEEK_ROWS))
        publish, topic, inflight, connected = self.client.publish, self.topic_telemetry, self._inflight, self._connected
        sent = 0
        while sent < n and rows:
            if not connected.is_set() or self._epoch != epoch:
                break  # a reconnect: paho re-sends what it holds first, new rows wait for those PUBACKs
            seq, payload = rows[0]
            info = publish(topic, payload, qos=1)
            if info.rc and info.rc != mqtt.MQTT_ERR_NO_CONN:
                log.warning("telemetry publish refused by paho", extra={"seq": seq, "rc": str(info.rc)})
                break
            # NO_CONN: paho keeps the message and sends it on reconnect, so it counts as handed over
            rows.popleft()
            inflight[info.mid] = seq
            self._cursor = seq
            sent += 1
        self._tokens -= sent
        self._counters["sent"] += sent

    # ---------------------------------------------------------------- paho callbacks (paho's thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._counters["connect_refused"] += 1
            log.warning(
                "MQTT connect refused", extra={"broker": f"{self.url.host}:{self.url.port}", "reason": str(reason_code)}
            )
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # paho leaves Nagle on: a PUBACK could wait ~40 ms for the delayed ACK (LIBRARY-NOTES.md)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(self.topic_trades, qos=1)
        client.publish(self.topic_status, status_payload(True, self.clock.now()), qos=1, retain=True)
        self._counters["connects"] += 1
        self._epoch += 1
        self._connected.set()
        self._wake.set()
        log.info(
            "MQTT connected",
            extra={
                "broker": f"{self.url.host}:{self.url.port}",
                "session_present": getattr(flags, "session_present", None),
            },
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        inflight = len(self._inflight)
        if self._running:
            self._set_will(client)  # the next CONNECT carries a fresh ts in the will
        if was and not self._running:
            log.info("MQTT disconnected (stopping)", extra={"inflight": inflight})
        elif was:
            self._counters["disconnects"] += 1
            log.warning(
                "MQTT disconnected; will reconnect",
                extra={"reason": str(reason_code), "inflight": inflight, "outbox_depth": self.outbox.depth},
            )

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # paho holds its own lock while calling us: hand the mid to the pump and never call paho here
        self._puback_mids.append(mid)
        if len(self._puback_mids) >= REFILL_MSGS or len(self._puback_mids) >= len(self._inflight):
            self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.topic_trades:
            log.warning("message on an unexpected topic ignored", extra={"topic": msg.topic})
            self._ack_incoming(msg)
            return
        if self._loop is None or self._loop.is_closed():
            log.error("trade received with no event loop to store it; left for redelivery")
            return
        try:
            self._loop.call_soon_threadsafe(self._handle_trade, msg)
        except RuntimeError as e:  # the loop is closing: leave the message unacked so the broker redelivers
            log.error("trade received while the loop is closing; left for redelivery", extra={"error": str(e)})

    def _ack_incoming(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    # ---------------------------------------------------------------- trades (asyncio loop)
    def _handle_trade(self, msg: mqtt.MQTTMessage) -> None:
        """Check, store through accept_trade, publish the ack, then PUBACK the incoming message."""
        try:
            ack = self._decide(msg.payload)
            if ack is not None:
                body = {**ack, "ts": iso(self.clock.now())}
                info = self.client.publish(self.topic_ack, json.dumps(body, separators=(",", ":")), qos=1)
                if ack["accepted"] and isinstance(ack["trade_id"], str) and self.on_ack_confirmed is not None:
                    self._ack_watch.append((ack["trade_id"], info, time.monotonic() + ACK_CONFIRM_MAX_S))
                    self._wake.set()
                self._counters["trades_accepted" if ack["accepted"] else "trades_rejected"] += 1
        except Exception:
            # a bug here must not take the loop down; the message is still acked so it is not redelivered forever
            log.exception("trade handling failed", extra={"bytes": len(msg.payload)})
            self._counters["trades_failed"] += 1
        self._ack_incoming(msg)

    def _decide(self, payload: bytes) -> dict[str, Any] | None:
        """The ack for one incoming message, or None for one that is not JSON (ignored, logged)."""
        if len(payload) > MAX_TRADE_BYTES:
            reason = f"message too large ({len(payload)} bytes > {MAX_TRADE_BYTES})"
            log.warning("trade rejected", extra={"reason": reason})
            return {"trade_id": None, "accepted": False, "reason": reason}
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            # the sender learns it too: an ack without a trade_id (there is none to read)
            reason = f"not JSON: {str(e)[:200]}"
            log.warning("trade rejected", extra={"reason": reason, "bytes": len(payload)})
            return {"trade_id": None, "accepted": False, "reason": reason}
        trade_id = message.get("trade_id") if isinstance(message, dict) else None
        trade_id = trade_id if isinstance(trade_id, str) else None
        try:
            trade = check_envelope(message, self.secrets.hmac_secret, self.clock.now(), self.config.site.id)
        except TradeRejected as e:
            log.warning("trade rejected", extra={"trade_id": trade_id, "reason": str(e)})
            return {"trade_id": trade_id, "accepted": False, "reason": str(e)}
        ack = self.accept_trade(trade, source="mqtt")
        return ack.as_dict()
