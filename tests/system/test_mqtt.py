"""The MQTT link against a real Mosquitto and the real plant simulators: telemetry seq through a 20 s broker
outage and a restart with a non-empty outbox, signed trades in (and every kind of bad one), the exchange
simulator's publisher interoperating, and the last will when a real `bess-edge run` is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from controller.clock import iso
from controller.config import load_secrets
from controller.cycle.phases import Phase
from controller.daemon import Daemon
from controller.signing import sign_message
from controller.store import DB_FILENAME, Store
from controller.trading.schedule import PERIOD_S, parse_trade, period_start
from simulators.exchange.publisher import TradePublisher
from tests.fixtures.controller import device_ports, site_config, wait_for
from tests.fixtures.daemon import popen_daemon
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.payloads import TELEMETRY_KEYS
from tests.fixtures.plant import make_plant, plant  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(90)

SECRET = "phoenyra_demo_secret"  # the configs are mode: demo, so the demo secret is allowed
QUIET = {"web": {"enabled": False}, "scada": {"modbus": {"enabled": False}, "opcua": {"enabled": False}}}


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory):
    """The fixture's Mosquitto with persistence on, so the test subscriber's session (and the messages queued
    for it) survive the broker's stop/start; each start otherwise begins empty."""
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.conf.write_text(
        b.conf.read_text().replace(
            "persistence false\n", f"persistence true\npersistence_location {b.workdir}/\nautosave_interval 1\n"
        )
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Sub:
    """A test subscriber with a persistent session (MQTT 3.1.1, clean_session off) recording every message."""

    def __init__(self, broker: Mosquitto, topics: list[str], name: str = "test-sub"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._parsed: dict[str, tuple[int, list[dict]]] = {}  # topic -> (messages scanned, that topic's parsed)
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.topics = topics
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.c.reconnect_delay_set(0.2, 0.5)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect(broker.host, broker.port, keepalive=10)
        self.c.loop_start()
        assert self.ready.wait(5), "test subscriber did not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.retain))

    def payloads(self, topic: str) -> list[dict]:
        """The topic's messages parsed, in arrival order. Tests poll this every 20 ms while up to 20,000 messages
        arrive, so each message is parsed once, outside the lock (holding it for a full re-parse starved paho's
        thread and, on the event loop, the control cycle)."""
        scanned, parsed = self._parsed.setdefault(topic, (0, []))
        with self.lock:
            new = self.messages[scanned:]
        parsed.extend(json.loads(p) for t, p, _ in new if t == topic)
        self._parsed[topic] = (scanned + len(new), parsed)
        return list(parsed)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def seqs(sub: Sub, site: str = "demo") -> list[int]:
    return [m["seq"] for m in sub.payloads(f"bess/{site}/telemetry")]


def assert_in_order_none_missing(got: list[int], first: int, last: int) -> None:
    """Every seq first..last arrived; a seq already seen may come again (a QoS 1 redelivery), nothing else."""
    highest = first - 1
    for s in got:
        if s <= highest:
            continue  # a redelivery of a seq already received
        assert s == highest + 1, f"seq {highest + 1} missing or out of order (next was {s}); got {got}"
        highest = s
    assert highest >= last, f"seq up to {last} expected, got up to {highest}"


def make_config(tmp_path: Path, plant, **mqtt_over):
    return site_config(
        tmp_path, device_ports(plant), **QUIET, mqtt={"telemetry_interval_s": 0.2, "reconnect_max_s": 1, **mqtt_over}
    )


def secrets_for(cfg, broker: Mosquitto, port: int | None = None):
    return load_secrets(
        cfg, {"API_KEY": "demo", "HMAC_SECRET": SECRET, "MQTT_URL": f"mqtt://127.0.0.1:{port or broker.port}"}
    )


async def started(cfg, secrets, state_dir: Path) -> Daemon:
    d = Daemon(cfg, secrets, state_dir)
    await d.start()
    return d


# --------------------------------------------------------------------------------------------- telemetry
async def test_telemetry_survives_a_20_s_broker_outage(broker, plant, tmp_path):
    cfg = make_config(tmp_path, plant)
    sub = Sub(broker, ["bess/demo/telemetry"])
    d = await started(cfg, secrets_for(cfg, broker), tmp_path / "state")
    try:
        await wait_for(lambda: len(seqs(sub)) >= 5, 10, "five telemetry messages")
        got = seqs(sub)
        assert got == list(range(got[0], got[0] + len(got))), got
        assert got[0] == 1
        first = json.loads(json.dumps(sub.payloads("bess/demo/telemetry")[0]))
        assert set(first) == {"seq", *TELEMETRY_KEYS}
        assert [u["unit"] for u in first["units"]] == ["u1"] and first["poi"] is None  # one unit, no meter

        broker.stop()
        await wait_for(lambda: not d.uplink.connected, 5, "the uplink to notice the outage")
        seq_before = d.uplink.outbox.last_seq
        cycles_before = d.controller.stats.good_cycles
        await asyncio.sleep(20)  # the outage lasts (at least) 20 s; what it must not stop is counted below
        # the cycle kept running and producing telemetry into the outbox (60 cycles take 12 s at the 0.2 s period)
        await wait_for(
            lambda: (
                d.uplink.outbox.last_seq - seq_before >= 60 and d.controller.stats.good_cycles - cycles_before >= 60
            ),
            20,
            "60 good cycles and 60 telemetry messages produced during the outage",
        )
        produced = d.uplink.outbox.last_seq - seq_before
        assert d.uplink.stats["outbox_depth"] >= produced
        assert not d.uplink.connected, "the outage is still on"
        broker.start()
        await wait_for(lambda: d.uplink.connected, 10, "the uplink to reconnect")
        target = d.uplink.outbox.last_seq
        await wait_for(lambda: max(seqs(sub), default=0) >= target, 15, f"seq {target} at the subscriber")
        assert_in_order_none_missing(seqs(sub), 1, target)
        await wait_for(lambda: d.uplink.stats["outbox_depth"] <= 2, 5, "the outbox to drain")
        assert d.uplink.stats["outbox_dropped"] == 0
    finally:
        await d.stop()
        sub.stop()


async def test_restarted_controller_sends_its_outbox(broker, plant, tmp_path):
    cfg = make_config(tmp_path, plant)
    state = tmp_path / "state"
    dead_port = broker.port + 1 if broker.port < 65535 else broker.port - 1
    # first life: no broker reachable, so everything stays in the outbox
    d = await started(cfg, secrets_for(cfg, broker, port=dead_port), state)
    try:
        await wait_for(lambda: d.uplink.outbox.last_seq >= 10, 10, "ten telemetry messages in the outbox")
    finally:
        await d.stop()
    from controller.uplink.outbox import Outbox

    box = Outbox(state / "bess-edge.db", 1000, 3600)
    left, depth = box.last_seq, box.depth
    box.close()
    assert depth == left >= 10

    sub = Sub(broker, ["bess/demo/telemetry"])
    d = await started(cfg, secrets_for(cfg, broker), state)
    try:
        await wait_for(lambda: max(seqs(sub), default=0) >= left + 3, 10, "the old outbox and new telemetry")
        assert_in_order_none_missing(seqs(sub), 1, left + 3)
    finally:
        await d.stop()
        sub.stop()


async def test_outage_backlog_drains_in_order_beside_a_fast_cycle(broker, plant, tmp_path):
    """A 20,000-row outage backlog drains in seq order, none missing, beside a 0.1 s cycle whose on_cycle hook
    has the pump go quiet around every cycle (bench/mqtt.py measures what that does for the cycle's p99)."""
    cfg = site_config(
        tmp_path,
        device_ports(plant),
        **QUIET,
        cycle={"period_s": 0.1},
        mqtt={"telemetry_interval_s": 0.1, "reconnect_max_s": 1, "drain_rate_per_s": 1e9},
    )
    sub = Sub(broker, ["bess/demo/telemetry"])
    d = await started(cfg, secrets_for(cfg, broker), tmp_path / "state")
    up = d.uplink
    assert up.on_cycle in d.controller.faces.attached(Phase.AFTER_WRITE)  # the Daemon attaches it
    try:
        await wait_for(lambda: up.connected and len(seqs(sub)) >= 3, 10, "live telemetry")
        broker.stop()
        await wait_for(lambda: not up.connected, 5, "the uplink to notice the outage")
        for _ in range(4):
            await asyncio.to_thread(up.outbox.append_many, [{"ts": iso(time.time()), "soc_pct": 50.0}] * 5000)
        broker.start()
        await wait_for(lambda: up.connected, 10, "the uplink to reconnect")
        target = up.outbox.last_seq
        await wait_for(lambda: max(seqs(sub), default=0) >= target, 60, f"seq {target} at the subscriber")
        assert_in_order_none_missing(seqs(sub), 1, target)
        await wait_for(lambda: up.stats["outbox_depth"] <= 2, 5, "the outbox to drain")
        assert up.stats["outbox_dropped"] == 0
        assert up._due is not None and up._due > time.monotonic() - 1  # the quiet windows were in effect
    finally:
        await d.stop()
        sub.stop()


# --------------------------------------------------------------------------------------------- trades
def trade_for_now(quantity_mw: float = 2.0, side: str = "sell") -> dict:
    start = period_start(time.time())
    return {
        "trade_id": f"t-{uuid.uuid4().hex[:10]}",
        "side": side,
        "quantity_mw": quantity_mw,
        "price_eur_mwh": 87.5,
        "delivery_start": iso(start),
        "delivery_end": iso(start + PERIOD_S),
        "market": "intraday",
        "executed_at": iso(time.time()),
    }


async def test_signed_trade_to_setpoint_and_bad_ones_rejected(broker, plant, tmp_path):
    cfg = make_config(tmp_path, plant)
    acks = Sub(broker, ["bess/demo/trades/ack"], "test-acks")
    d = await started(cfg, secrets_for(cfg, broker), tmp_path / "state")
    pub = TradePublisher(broker.url, SECRET, client_id="test-exchange")
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-raw", protocol=mqtt.MQTTv311)
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    pub.start()
    try:
        await wait_for(lambda: d.uplink.connected and pub.connected.is_set(), 10, "both clients connected")
        await wait_for(lambda: d.controller.stats.good_cycles >= 1, 10, "the first good cycle")
        # the exchange simulator's publisher: same signing, same ack shape
        good = trade_for_now(2.0)
        pub.publish_trade("demo", good)
        await wait_for(lambda: pub.delivery("demo", good["trade_id"])["ack"] is not None, 10, "the ack")
        ack = pub.delivery("demo", good["trade_id"])["ack"]
        assert ack["accepted"] is True, ack
        assert d.store.has_trade(good["trade_id"])
        await wait_for(lambda: abs(plant.pcs.requested_mw() - 2.0) < 0.01, 5, "2 MW on the PCS simulator")
        # the broker took our ack: from now on the same trade again is a replay, refused as a duplicate
        await wait_for(
            lambda: d.store.stored_trade(good["trade_id"])["ack_confirmed_ts"] is not None,
            5,
            "the ack's PUBACK recorded",
        )
        n_trades = len(d.store.trades())

        def signed(msg: dict, ts: float | None = None, site: str | None = "demo") -> bytes:
            bound = {**msg, "site": site} if site is not None else msg
            return json.dumps(sign_message({**bound, "ts": iso(time.time() if ts is None else ts)}, SECRET)).encode()

        bad_sig = json.loads(signed(trade_for_now()))
        bad_sig["sig"] = "0" * 64
        wrong_types = {**trade_for_now(), "quantity_mw": "lots", "side": 3}
        cases = {
            "bad signature": json.dumps(bad_sig).encode(),
            "missing signature": json.dumps({**trade_for_now(), "ts": iso(time.time())}).encode(),
            "stale ts": signed(trade_for_now(), ts=time.time() - 400),
            "future ts": signed(trade_for_now(), ts=time.time() + 400),
            "replayed trade_id": signed(good),
            "wrong types": signed(wrong_types),
            "not an object": b"[1, 2, 3]",
            "one megabyte": signed({**trade_for_now(), "padding": "x" * (1 << 20)}),
            # a trade the exchange signed for another site, replayed on ours within the ts window
            "another site's trade": signed(trade_for_now(2.0), site="other"),
            "no site": signed(trade_for_now(2.0), site=None),
        }
        cases["not JSON"] = b"\xff not json {"
        cases["empty"] = b""
        before = len(acks.payloads("bess/demo/trades/ack"))
        for name, payload in cases.items():
            raw.publish("bess/demo/trades", payload, qos=1).wait_for_publish(5)
        await wait_for(
            lambda: len(acks.payloads("bess/demo/trades/ack")) >= before + len(cases),
            10,
            "an ack for every bad message",
        )
        await asyncio.sleep(0.5)  # and no more
        got = acks.payloads("bess/demo/trades/ack")[before:]
        assert len(got) == len(cases), got
        assert all(
            a["accepted"] is False and a["reason"] and set(a) == {"trade_id", "accepted", "reason", "ts"} for a in got
        ), got
        assert sum(a["trade_id"] is None for a in got) >= 4  # not an object, too large, not JSON, empty
        reasons = " | ".join(a["reason"] for a in got)
        for needle in (
            "bad signature",
            "sig: missing",
            "more than 300 s",
            "duplicate",
            "too large",
            "quantity_mw",
            "not JSON",
        ):
            assert needle in reasons, (needle, reasons)
        assert len(d.store.trades()) == n_trades  # nothing stored
        for name in ("another site's trade", "no site"):
            trade_id = json.loads(cases[name])["trade_id"]
            ack = next(a for a in got if a["trade_id"] == trade_id)
            assert ack["reason"].startswith("site:"), (name, ack)
            assert not d.store.has_trade(trade_id) and trade_id not in d.controller.schedule
        assert d.uplink.stats["trades_rejected"] == len(cases) and d.uplink.stats["trades_failed"] == 0
        cycles = d.controller.stats.good_cycles
        await wait_for(lambda: d.controller.stats.good_cycles > cycles + 2, 5, "the cycle still running")
        assert d.uplink.connected and abs(plant.pcs.requested_mw() - 2.0) < 0.01
    finally:
        pub.stop()
        raw.disconnect()
        raw.loop_stop()
        await d.stop()
        acks.stop()


async def test_mqtt_311_fallback(broker, plant, tmp_path):
    cfg = make_config(tmp_path, plant, protocol="3.1.1")
    sub = Sub(broker, ["bess/demo/telemetry", "bess/demo/status"])
    d = await started(cfg, secrets_for(cfg, broker), tmp_path / "state")
    try:
        await wait_for(lambda: len(seqs(sub)) >= 3, 10, "telemetry over MQTT 3.1.1")
        assert sub.payloads("bess/demo/status")[-1]["online"] is True
    finally:
        await d.stop()
    await asyncio.sleep(0.3)
    assert sub.payloads("bess/demo/status")[-1]["online"] is False  # a clean stop says offline
    sub.stop()


# --------------------------------------------------------------------------------------------- last will
async def test_last_will_when_killed(broker, plant, tmp_path):
    """A real `bess-edge run` on the plant: online (retained) while it runs, the will (offline, retained) after
    SIGKILL."""
    make_config(tmp_path, plant)  # writes tmp_path/site.yaml
    env = {**os.environ, "API_KEY": "demo", "HMAC_SECRET": SECRET, "MQTT_URL": broker.url}
    sub = Sub(broker, ["bess/demo/status"], "test-will")
    proc = popen_daemon(tmp_path, env)

    def status() -> list[dict]:
        return sub.payloads("bess/demo/status")

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s["online"] for s in status()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            await asyncio.sleep(0.05)  # the plant serves from this loop: never block it
        assert any(s["online"] for s in status()), "no online status from the controller"
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        await wait_for(lambda: status()[-1]["online"] is False, 10, "the last will")
        assert "ts" in status()[-1]
        late = Sub(broker, ["bess/demo/status"], "test-late")  # the will is retained: a newcomer sees it
        try:
            await wait_for(lambda: bool(late.payloads("bess/demo/status")), 5, "the retained status")
            assert late.payloads("bess/demo/status")[-1]["online"] is False
        finally:
            late.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        sub.stop()


# ------------------------------------------------------------------------------------- redelivery after a crash
async def test_a_trade_stored_but_never_acked_is_acked_accepted_on_redelivery(broker, plant, tmp_path):
    """The state a kill -9 leaves between storing an MQTT trade and the broker taking its ack: the trade is in
    the store, its ack is not confirmed, and the exchange (which got no answer) redelivers it. It is answered
    "accepted" (the truth: it is stored and will be delivered) and dispatched once. Once that ack is confirmed,
    the same trade again is a refused replay, and so is the id with other content."""
    cfg = make_config(tmp_path, plant)
    t = trade_for_now(2.0)
    with Store.in_state_dir(tmp_path / "state") as store:
        assert store.add_trade(parse_trade(t).model_dump(mode="json"), "mqtt")
    acks = Sub(broker, ["bess/demo/trades/ack"], "test-acks")
    d = await started(cfg, secrets_for(cfg, broker), tmp_path / "state")
    pub = TradePublisher(broker.url, SECRET, client_id="test-exchange")
    pub.start()
    try:
        await wait_for(lambda: d.uplink.connected and pub.connected.is_set(), 10, "both clients connected")
        await wait_for(lambda: abs(plant.pcs.requested_mw() - 2.0) < 0.01, 10, "the stored trade at the PCS")
        pub.publish_trade("demo", t)
        await wait_for(lambda: pub.delivery("demo", t["trade_id"])["ack"] is not None, 10, "the ack")
        ack = pub.delivery("demo", t["trade_id"])["ack"]
        assert ack["accepted"] is True and "not dispatched again" in ack["reason"], ack
        await wait_for(
            lambda: d.store.stored_trade(t["trade_id"])["ack_confirmed_ts"] is not None, 5, "the ack's PUBACK recorded"
        )
        cycles = d.controller.stats.good_cycles
        await wait_for(lambda: d.controller.stats.good_cycles > cycles + 2, 5, "a few more cycles")
        assert abs(plant.pcs.requested_mw() - 2.0) < 0.01  # once, not 4 MW

        pub.publish_trade("demo", t)  # a replay of an answered trade
        pub.publish_trade("demo", {**t, "quantity_mw": 5.0})  # the id with other content
        await wait_for(lambda: len(acks.payloads("bess/demo/trades/ack")) >= 3, 10, "two more acks")
        first, *refusals = acks.payloads("bess/demo/trades/ack")
        assert first["accepted"] is True and len(refusals) == 2, refusals
        assert all(a["accepted"] is False and "duplicate" in a["reason"] for a in refusals), refusals
        assert [x["trade_id"] for x in d.store.trades()] == [t["trade_id"]]
        assert d.uplink.stats["trades_accepted"] == 1 and d.uplink.stats["trades_rejected"] == 2
        assert abs(plant.pcs.requested_mw() - 2.0) < 0.01
    finally:
        pub.stop()
        await d.stop()
        acks.stop()


async def test_a_trade_redelivered_after_kill_9_is_dispatched_once(broker, plant, tmp_path):
    """kill -9 of a real `bess-edge run` after it stored and followed two trades; while it is dead the exchange
    sends them again (as it does for trades it holds no ack for) and sends two new ones, and the broker keeps
    them all in the controller's persistent session. After the restart the new trades are followed and the
    re-sent ones are acked as duplicates and never dispatched twice: the seen trade_ids are the store's, and the
    store survived the kill. Each trade covers this period and the next, so a boundary mid-test changes nothing."""
    make_config(tmp_path, plant)  # writes tmp_path/site.yaml
    env = {**os.environ, "API_KEY": "demo", "HMAC_SECRET": SECRET, "MQTT_URL": broker.url}
    log_path = tmp_path / "daemon.log"
    status = Sub(broker, ["bess/demo/status"], "test-status")
    acks = Sub(broker, ["bess/demo/trades/ack"], "test-acks")
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-exchange-raw", protocol=mqtt.MQTTv311)
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    p0 = period_start(time.time())

    def trades(quantity_mw: float) -> list[dict]:
        return [
            {**trade_for_now(quantity_mw), "delivery_start": iso(s), "delivery_end": iso(s + PERIOD_S)}
            for s in (p0, p0 + PERIOD_S)
        ]

    def send(batch: list[dict]) -> None:
        for t in batch:  # signed now: a re-sent trade carries a fresh ts, as the exchange's re-send does
            body = json.dumps(sign_message({**t, "site": "demo", "ts": iso(time.time())}, SECRET)).encode()
            raw.publish("bess/demo/trades", body, qos=1).wait_for_publish(5)

    def acks_for(trade_id: str) -> list[dict]:
        return [a for a in acks.payloads("bess/demo/trades/ack") if a["trade_id"] == trade_id]

    async def online_after(n_before: int) -> None:
        await wait_for(
            lambda: any(s["online"] for s in status.payloads("bess/demo/status")[n_before:]),
            30,
            "the controller online",
        )

    def acks_confirmed() -> int:
        db = tmp_path / "state" / DB_FILENAME
        if not db.exists():
            return 0
        c = sqlite3.connect(db, timeout=5)
        try:
            return c.execute("SELECT count(*) FROM trade_ids WHERE ack_confirmed_ts IS NOT NULL").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0
        finally:
            c.close()

    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(popen_daemon(tmp_path, env, log_path))
        return procs[-1]

    first, later = trades(2.0), trades(1.0)
    try:
        n = len(status.payloads("bess/demo/status"))
        proc = start()
        await online_after(n)
        send(first)
        await wait_for(lambda: all(acks_for(t["trade_id"]) for t in first), 10, "the first trades' acks")
        assert all(acks_for(t["trade_id"])[0]["accepted"] for t in first), acks.payloads("bess/demo/trades/ack")
        await wait_for(lambda: abs(plant.pcs.requested_mw() - 2.0) < 1e-3, 10, "2 MW at the PCS")
        await wait_for(lambda: acks_confirmed() == 2, 5, "the acks' PUBACKs recorded by the controller")

        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        await wait_for(lambda: status.payloads("bess/demo/status")[-1]["online"] is False, 10, "the last will")
        send(first + later)  # queued by the broker in the dead controller's session

        n = len(status.payloads("bess/demo/status"))
        start()
        await online_after(n)
        await wait_for(lambda: all(acks_for(t["trade_id"]) for t in later), 20, "the new trades' acks")
        assert all(acks_for(t["trade_id"])[-1]["accepted"] for t in later)
        await wait_for(lambda: all(len(acks_for(t["trade_id"])) == 2 for t in first), 10, "the re-sent trades' acks")
        for t in first:
            again = acks_for(t["trade_id"])[-1]
            assert again["accepted"] is False and "duplicate" in again["reason"], again
        await wait_for(lambda: abs(plant.pcs.requested_mw() - 3.0) < 1e-3, 15, "3 MW at the PCS (2 + 1, not 5)")
        await asyncio.sleep(1.0)  # a few more cycles: still 3 MW
        assert abs(plant.pcs.requested_mw() - 3.0) < 1e-3, plant.pcs.requested_mw()
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:] if log_path.exists() else "no daemon log")
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        raw.loop_stop()
        raw.disconnect()
        status.stop()
        acks.stop()
    with Store.in_state_dir(tmp_path / "state") as store:
        ids = [t["trade_id"] for t in store.trades()]
    assert sorted(ids) == sorted(t["trade_id"] for t in first + later), ids
