"""Profile-driven OPC UA client: reads a profile's nodes into canonical readings by data-change subscription,
falls back to one batched Read per poll when the subscription fails or goes quiet, writes with a status
check and optional read-back, and maps every failure to a typed error.

Freshness: a subscribed value is served only while the subscription keeps publishing (data or keep-alive);
each reading carries the driver-clock time the server last vouched for it (the last publish response
received, or the Read response received). Server SourceTimestamps are not used: a plant clock need not
agree with ours.

Trust: a value whose StatusCode is not Good (from the subscription or a poll alike), a non-finite or
non-numeric value, or one outside the point's plausible range reads as unknown (value None, with the raw
value and the reason), never as a number to act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState

from drivers import codec
from drivers.backoff import Backoff
from drivers.base import DriverStats, Reading, TimeSource, WallTime
from drivers.errors import (
    DeviceTimeout,
    Disconnected,
    OpcUaError,
    ReadbackMismatch,
    WriteRefused,
)
from drivers.profile import Point, Profile, plausible_range

log = logging.getLogger("bess.drivers.opcua")

PUBLISHING_INTERVAL_S = 0.2  # default: a 1 s control cycle sees every change within a fifth of it
KEEPALIVE_S = 0.5  # the server sends a keep-alive at least this often when nothing changes
RESUBSCRIBE_AFTER_S = 5.0  # while polling after a subscription failure, try subscribing again this often
SESSION_TIMEOUT_MS = 30_000  # a session we abandon (dead link) is freed by the server within this
WATCHDOG_S = 2.0  # asyncua's own liveness probe of the server (one small Read)

VARIANT_TYPES = {
    "u16": ua.VariantType.UInt16,
    "i16": ua.VariantType.Int16,
    "u32": ua.VariantType.UInt32,
    "i32": ua.VariantType.Int32,
    "u64": ua.VariantType.UInt64,
    "i64": ua.VariantType.Int64,
    "f32": ua.VariantType.Float,
    "string": ua.VariantType.String,
}
INT_RANGES = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFFFFFF),
    "i32": (-0x80000000, 0x7FFFFFFF),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
}


class OpcUaDriver:
    """A device read and written through its node-id profile over one OPC UA session (None security)."""

    def __init__(
        self,
        name: str,
        profile: Profile,
        endpoint: str,
        timeout_s: float = 1.0,
        clock: TimeSource | None = None,
        subscribe: bool = True,
        publishing_interval_s: float = PUBLISHING_INTERVAL_S,
        max_age_s: float | None = None,
        backoff_max_s: float = 10.0,
        resubscribe_after_s: float = RESUBSCRIBE_AFTER_S,
        rating_mw: float | None = None,
    ):
        if profile.protocol != "opcua":
            raise ValueError(f"device {name}: profile {profile.name} is a {profile.protocol} profile, not opcua")
        self.name = name
        self.profile = profile
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.clock: TimeSource = clock or WallTime()
        self.subscribe = subscribe
        self.publishing_interval_s = publishing_interval_s
        self.keepalive_count = max(1, math.ceil(KEEPALIVE_S / publishing_interval_s))
        # a subscription is trusted while a publish response arrived within two keep-alive periods
        keepalive_s = publishing_interval_s * self.keepalive_count
        self.max_age_s = max_age_s if max_age_s is not None else max(2 * keepalive_s, 0.5)
        self.backoff = Backoff(backoff_max_s)
        self.resubscribe_after_s = resubscribe_after_s
        self.stats = DriverStats()
        self._client: Client | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._sub: Any = None
        # (device value, StatusCode) as the subscription last delivered them
        self._sub_values: dict[str, tuple[Any, ua.StatusCode | None]] = {}
        self._sub_failed_at: float | None = None  # monotonic, of the last subscription failure
        self._sub_since = 0.0  # monotonic, when the current subscription was made
        self._connect_lock = asyncio.Lock()
        # Backoff runs on real time even under a sped-up clock: it protects a real network peer.
        self._sf_names = {p.scale for p in profile.points.values() if isinstance(p.scale, str)}
        rating = profile.rated_power_mw or rating_mw
        self._plausible = {
            n: plausible_range(n, p, rating, scale_factor=n in self._sf_names) for n, p in profile.points.items()
        }

    # -- state -----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.uaclient.state is UaClientState.CONNECTED

    @property
    def session(self) -> Client | None:
        """The open asyncua client, None while down: commissioning (`bess-edge probe --opcua`) browses the address
        space through it, so it connects exactly as the control cycle would."""
        return self._client

    @property
    def mode(self) -> str:
        """'subscription' when reads are served from a live subscription, else 'polling'."""
        return "subscription" if self._sub_fresh() else "polling"

    def _sub_fresh(self) -> bool:
        return self._sub_state() == "fresh"

    def _sub_state(self) -> str:
        """'fresh': every value delivered and a publish response within max_age_s; 'starting': a new
        subscription still within max_age_s of its creation; 'quiet': it stopped delivering; 'none'."""
        if self._sub is None or not self.connected:
            return "none"
        now = time.monotonic()
        last = self._sub.last_publish_at
        if last is None or len(self._sub_values) < len(self._nodes):
            return "starting" if now - self._sub_since <= self.max_age_s else "quiet"
        return "fresh" if now - last <= self.max_age_s else "quiet"

    # -- connection ------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a session unless one is up; while backing off after a failure, raise Disconnected."""
        if self.connected:
            return
        async with self._connect_lock:
            if self.connected:
                return
            self.backoff.refuse_while_waiting(self.name, self.endpoint)
            await self._drop_client()
            self.stats.connect_attempts += 1
            client = Client(self.endpoint, timeout=self.timeout_s, watchdog_intervall=WATCHDOG_S)
            client.session_timeout = SESSION_TIMEOUT_MS
            client.name = client.description = f"bess-edge {self.name}"
            # connect = Hello, OpenSecureChannel, CreateSession, ActivateSession: a few round trips
            connect_timeout_s = 4 * self.timeout_s
            try:
                await asyncio.wait_for(client.connect(), connect_timeout_s)
                nodes = await asyncio.wait_for(self._resolve(client), self.timeout_s)
            except BaseException as e:
                await self._abort(client)
                if not isinstance(e, Exception):
                    raise  # cancellation: the client is gone, pass it on
                self.backoff.failed()
                err = self._typed(e, "connect", timeout_s=connect_timeout_s)
                log.warning(
                    "device %s: cannot connect to %s (%s); next attempt in %.1f s",
                    self.name,
                    self.endpoint,
                    err.message,
                    self.backoff.delay_s,
                )
                raise err from None
            self._client = client
            self._nodes = nodes
            self.stats.connects += 1
            log.info("device %s: connected to %s", self.name, self.endpoint)
            if self.subscribe:
                await self._try_subscribe()

    async def _resolve(self, client: Client) -> dict[str, ua.NodeId]:
        """Profile node ids with the profile's namespace index replaced by the server's live index for the
        profile's namespace URI (servers may number namespaces differently)."""
        ns_index = None
        if self.profile.namespace:
            try:
                ns_index = await client.get_namespace_index(self.profile.namespace)
            except ValueError:
                raise OpcUaError(
                    self.name, "BadNamespaceUnknown", f"server does not know namespace {self.profile.namespace}"
                ) from None
        nodes = {}
        for name, p in self.profile.points.items():
            nid = ua.NodeId.from_string(p.node_id)
            if ns_index is not None and nid.NamespaceIndex != 0:
                nid = ua.NodeId(nid.Identifier, ns_index, nid.NodeIdType)
            nodes[name] = nid
        return nodes

    async def _abort(self, client: Client) -> None:
        """Tear a client down without waiting on the peer: a dead link must not stall the cycle."""
        client.uaclient.request_disconnect()
        for attr in ("_stale_watchdog_task", "_supervisor_task", "_renew_channel_task"):
            await Client._cancel_task(getattr(client, attr, None))
        publish = getattr(client.uaclient.session, "_publish_task", None)
        await Client._cancel_task(publish)
        client.disconnect_socket()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._sub = None
        self._sub_values.clear()
        if client is not None:
            await self._abort(client)

    async def close(self) -> None:
        """Close the session politely when the link is up (bounded by the timeout), else just the socket."""
        client, self._client = self._client, None
        self._sub = None
        self._sub_values.clear()
        if client is None:
            return
        if client.uaclient.state is UaClientState.CONNECTED:
            try:
                await asyncio.wait_for(client.disconnect(), self.timeout_s)
                return
            except (asyncio.TimeoutError, ConnectionError, OSError, ua.UaError) as e:
                log.info("device %s: session close failed (%r); dropping the socket", self.name, e)
        await self._abort(client)

    # -- subscription ----------------------------------------------------------------------------------

    async def _try_subscribe(self) -> None:
        """Subscribe to every node; on failure log it and read by polling until the next attempt."""
        client = self._client
        assert client is not None
        self._sub_values.clear()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.publishing_interval_s * 1000,
            RequestedMaxKeepAliveCount=self.keepalive_count,
            # the server drops the subscription after this many silent intervals: a few keep-alives' worth
            RequestedLifetimeCount=max(3 * self.keepalive_count, math.ceil(10 / self.publishing_interval_s)),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        names = list(self._nodes)
        try:
            sub = await asyncio.wait_for(client.create_subscription(params, _Handler(self)), self.timeout_s)
            handles = await asyncio.wait_for(
                sub.subscribe_data_change(
                    [client.get_node(self._nodes[n]) for n in names],
                    sampling_interval=self.publishing_interval_s * 1000 / 2,
                ),
                self.timeout_s,
            )
            bad = [f"{n}: {h.name}" for n, h in zip(names, handles) if isinstance(h, ua.StatusCode)]
            if bad:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError, ua.UaError):
                    await asyncio.wait_for(sub.delete(), self.timeout_s)
                raise OpcUaError(self.name, "BadMonitoredItem", "cannot monitor " + ", ".join(bad))
        except (asyncio.TimeoutError, ConnectionError, OSError, ua.UaError, OpcUaError) as e:
            self._sub = None
            self._sub_failed_at = time.monotonic()
            self.stats.subscription_failures += 1
            log.warning("device %s: subscription failed (%r); reading by polling", self.name, e)
            return
        self._sub = sub
        self._sub_since = time.monotonic()
        self._sub_failed_at = None
        self.stats.subscriptions += 1

    def _on_change(self, node: Any, value: Any, status: ua.StatusCode | None) -> None:
        name = next((n for n, nid in self._nodes.items() if nid == node.nodeid), None)
        if name is None:
            log.debug("device %s: notification for unknown node %s", self.name, node.nodeid)
            return
        self.stats.notifications += 1
        self._sub_values[name] = (value, status)

    async def _drop_subscription(self, why: str) -> None:
        """Stop trusting the subscription (delete it on the server, bounded) and poll until resubscribing."""
        sub, self._sub = self._sub, None
        self._sub_values.clear()
        self._sub_failed_at = time.monotonic()
        self.stats.subscription_failures += 1
        log.warning("device %s: subscription %s; reading by polling", self.name, why)
        if sub is not None:
            try:
                await asyncio.wait_for(sub.delete(), self.timeout_s)
            except (asyncio.TimeoutError, ConnectionError, OSError, ua.UaError) as e:
                log.info("device %s: deleting the quiet subscription failed (%r)", self.name, e)

    # -- requests --------------------------------------------------------------------------------------

    def _typed(self, e: Exception, what: str, timeout_s: float | None = None):
        """Any failure of a request as the typed error the cycle acts on."""
        if isinstance(e, (OpcUaError, DeviceTimeout, Disconnected)):
            return e
        if isinstance(e, asyncio.TimeoutError):
            return DeviceTimeout(self.name, f"{what}: no answer within {timeout_s or self.timeout_s} s")
        if isinstance(e, (ConnectionError, OSError)):
            return Disconnected(self.name, f"{what}: connection lost ({e or type(e).__name__})")
        if isinstance(e, ua.UaStatusCodeError):
            return OpcUaError(self.name, ua.StatusCode(e.code).name, f"{what}: {ua.StatusCode(e.code).name}")
        return OpcUaError(self.name, "BadUnexpectedError", f"{what}: {type(e).__name__}: {e}")

    async def _call(self, what: str, coro_fn, *args):
        """One request on the wire: per-request timeout, typed errors, stats."""
        await self.connect()
        client = self._client
        assert client is not None
        t0 = time.perf_counter()
        self.stats.requests += 1
        try:
            result = await asyncio.wait_for(coro_fn(client, *args), self.timeout_s)
        except (asyncio.TimeoutError, ConnectionError, OSError, ua.UaError) as e:
            err = self._typed(e, what)
            self.stats.failed(what, err.cause)
            if not isinstance(err, OpcUaError):
                # a silent or dropped link: start afresh (a new session) on the next request
                await self._drop_client()
                if isinstance(err, Disconnected):
                    self.backoff.failed()
            raise err from None
        except Exception as e:
            # asyncua re-raises any other failure of its transport as-is; the contract is typed errors only
            log.exception("device %s: %s failed inside asyncua", self.name, what)
            self.stats.failed(what, "unexpected")
            await self._drop_client()
            raise self._typed(e, what) from None
        self.stats.last_latency_s = time.perf_counter() - t0
        self.backoff.succeeded()
        return result

    async def read_raw(self, names: list[str]) -> dict[str, Any]:
        """Device values of `names` in one Read request; a bad status on any node raises OpcUaError."""

        async def read(client: Client, nids: list[ua.NodeId]) -> list[ua.DataValue]:
            return await client.uaclient.read_attributes(nids, ua.AttributeIds.Value)

        dvs = await self._call(f"read {len(names)} nodes", read, [self._nodes[n] for n in names])
        out = {}
        for n, dv in zip(names, dvs):
            status = dv.StatusCode or ua.StatusCode()
            if status.is_bad():
                self.stats.failed(f"read {n}", status.name)
                raise OpcUaError(self.name, status.name, f"read {n} ({self._nodes[n].to_string()}): {status.name}")
            out[n] = dv.Value.Value if dv.Value is not None else None
        return out

    async def _poll(self, names: list[str]) -> dict[str, tuple[Any, ua.StatusCode]]:
        """(device value, StatusCode) of `names` in one Read request; a bad status makes that point unknown
        (see _checked), not the whole read a failure: the other points are still good."""

        async def read(client: Client, nids: list[ua.NodeId]) -> list[ua.DataValue]:
            return await client.uaclient.read_attributes(nids, ua.AttributeIds.Value)

        dvs = await self._call(f"read {len(names)} nodes", read, [self._nodes[n] for n in names])
        return {
            n: (dv.Value.Value if dv.Value is not None else None, dv.StatusCode or ua.StatusCode())
            for n, dv in zip(names, dvs)
        }

    # -- read ------------------------------------------------------------------------------------------

    async def read(self) -> dict[str, Reading]:
        """Every point of the profile in canonical units: from the live subscription when it is fresh, else
        from one batched Read; each reading is timestamped when the server last vouched for it."""
        t0 = time.perf_counter()
        if self.connected and self._client is not None:
            if self._sub_state() == "quiet":
                await self._drop_subscription(f"delivered nothing for over {self.max_age_s:.2f} s")
            elif (
                self._sub is None
                and self.subscribe
                and self._sub_failed_at is not None
                and time.monotonic() - self._sub_failed_at > self.resubscribe_after_s
            ):
                await self._try_subscribe()
        await self.connect()
        if self._sub_fresh():
            age_s = time.monotonic() - self._sub.last_publish_at
            ts = self.clock.now() - age_s * self.clock.speed
            raw = dict(self._sub_values)
            self.stats.served_from_subscription += 1
        else:
            raw = await self._poll(list(self._nodes))
            ts = self.clock.now()
            self.stats.polls += 1
        out = self._decode_all(raw, ts)
        self.stats.reads += 1
        self.stats.last_read_latency_s = time.perf_counter() - t0
        return out

    def _decode_all(self, raw: dict[str, tuple[Any, ua.StatusCode | None]], ts: float) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        sf_values: dict[str, Any] = {}
        for n in self._sf_names:  # scale factors first: the points they scale need their checked value
            if n in raw:
                out[n] = self._checked(n, self.profile.points[n], *raw[n], sf_values, ts)
                sf_values[n] = out[n].value
        for n, (value, status) in raw.items():
            if n not in out:
                out[n] = self._checked(n, self.profile.points[n], value, status, sf_values, ts)
        return out

    def _checked(
        self, name: str, p: Point, value: Any, status: ua.StatusCode | None, sf_values: dict[str, Any], ts: float
    ) -> Reading:
        """One node's value -> its reading in canonical units, or an unknown reading that says why."""
        if status is not None and not status.is_good():
            return Reading(None, ts, f"{value!r} with status {status.name}", f"not Good ({status.name})")
        if p.type == "string" and isinstance(value, (str, bytes)):
            return Reading(value.decode(errors="replace") if isinstance(value, bytes) else value, ts)
        if isinstance(value, bool):
            value = int(value)
        if value is None:
            return Reading(None, ts, "null", "an empty value")
        if not isinstance(value, (int, float)) or p.type == "string":
            return Reading(None, ts, repr(value)[:80], f"not what a {p.type} point holds")
        if isinstance(value, float) and not math.isfinite(value):
            return Reading(None, ts, repr(value), "not a finite number")
        if p.bits and (value < 0 or value != int(value)):
            return Reading(None, ts, repr(value), "not a bit field (a whole number >= 0)")
        if isinstance(p.scale, str):
            sf = sf_values.get(p.scale)
            if sf is None:
                return Reading(None, ts, repr(value), f"scaled by {p.scale}, whose value is unknown")
            device = codec.apply_scale(value, 10.0 ** int(sf))
        else:
            device = codec.apply_scale(value, p.scale) if p.scale != 1 else value
        if p.offset:
            device = device + p.offset
        rng = self._plausible.get(name)
        if rng is not None and not rng[0] <= device <= rng[1]:
            unit = f" {p.unit}" if p.unit else ""
            return Reading(
                None, ts, f"{value!r} ({device:g}{unit})", f"outside the plausible range {rng[0]:g}..{rng[1]:g}{unit}"
            )
        f = p.factor
        return Reading(device if f == 1 else codec.apply_scale(device, f), ts)

    def _to_canonical(self, name: str, p: Point, value: Any, sf_values: dict[str, Any]):
        """Device value -> canonical units (a write's read-back): value * scale + offset, then the unit factor."""
        if value is None or isinstance(value, (str, bytes)):
            return value.decode(errors="replace") if isinstance(value, bytes) else value
        if isinstance(value, bool):
            return int(value)
        if not isinstance(value, (int, float)):
            raise OpcUaError(self.name, "BadTypeMismatch", f"{name}: unexpected value {value!r}")
        if isinstance(p.scale, str):
            sf = sf_values.get(p.scale)
            if sf is None:
                return None
            value = codec.apply_scale(value, 10.0 ** int(sf))
        elif p.scale != 1:
            value = codec.apply_scale(value, p.scale)
        if p.offset:
            value = value + p.offset
        f = p.factor
        return value if f == 1 else codec.apply_scale(value, f)

    # -- write -----------------------------------------------------------------------------------------

    def _point(self, point: str) -> Point:
        try:
            return self.profile.points[point]
        except KeyError:
            raise WriteRefused(self.name, f"{point}: no such point in profile {self.profile.name}") from None

    def _to_variant(self, point: str, p: Point, value: float | int | str) -> ua.Variant:
        """Canonical value -> the device's unit and OPC UA type, refused (WriteRefused) when out of range."""
        vt = VARIANT_TYPES[p.type]
        if p.type == "string":
            return ua.Variant(str(value), vt)
        if isinstance(value, str) or isinstance(value, bool):
            raise WriteRefused(self.name, f"{point}: a {p.type} point takes a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise WriteRefused(self.name, f"{point}: {value} is not a finite number")
        device = codec.apply_scale(value, 1 / p.factor) if p.factor != 1 else value
        if isinstance(p.scale, str):
            raise WriteRefused(self.name, f"{point}: writing a scale-factor scaled OPC UA point is not supported")
        device = (device - p.offset) / p.scale if (p.offset or p.scale != 1) else device
        eps = 1e-9 * max(1.0, abs(device))
        if p.min is not None and device < p.min - eps:
            raise WriteRefused(self.name, f"{point}: {value} is below the minimum ({p.min * p.factor:g})")
        if p.max is not None and device > p.max + eps:
            raise WriteRefused(self.name, f"{point}: {value} is above the maximum ({p.max * p.factor:g})")
        if p.type == "f32":
            return ua.Variant(float(device), vt)
        raw = round(device)
        if abs(device - raw) > 1e-6 * max(1.0, abs(device)):
            raise WriteRefused(self.name, f"{point}: {value} is not a whole number of device units")
        lo, hi = INT_RANGES[p.type]
        if not lo <= raw <= hi:
            raise WriteRefused(self.name, f"{point}: {value} does not fit a {p.type}")
        return ua.Variant(int(raw), vt)

    async def write(self, point: str, value: float | int | str, verify: bool = True) -> float | int | str | None:
        """Write one writable point given in canonical units; a bad status from the server raises OpcUaError;
        with `verify`, read it back and raise ReadbackMismatch if it differs."""
        p = self._point(point)
        if not p.writable:
            raise WriteRefused(self.name, f"{point}: not writable")
        variant = self._to_variant(point, p, value)
        await self.connect()

        async def write(client: Client, nid: ua.NodeId, dv: ua.DataValue) -> list[ua.StatusCode]:
            return await client.uaclient.write_attributes([nid], [dv], ua.AttributeIds.Value)

        statuses = await self._call(f"write {point}", write, self._nodes[point], ua.DataValue(variant))
        status = statuses[0]
        if not status.is_good():
            self.stats.failed(f"write {point}", status.name)
            raise OpcUaError(self.name, status.name, f"write {point} = {value!r}: {status.name}")
        if not verify:
            return None
        back_raw = (await self.read_raw([point]))[point]
        back = self._to_canonical(point, p, back_raw, {})
        if not _same(p, variant.Value, back_raw):
            raise ReadbackMismatch(self.name, point, value, back)  # type: ignore[arg-type]
        return back


def _same(p: Point, written: Any, back: Any) -> bool:
    """Did the device keep what we wrote (in device units)? Floats within float32 precision."""
    if back is None:
        return False
    if isinstance(written, str) or isinstance(back, str):
        return str(written) == str(back)
    if p.type == "f32":
        return math.isclose(float(back), float(written), rel_tol=1e-6, abs_tol=1e-30)
    return back == written


class _Handler:
    """asyncua's data-change callback: hands each new value to the driver's cache."""

    def __init__(self, driver: OpcUaDriver):
        self.driver = driver

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        # the value's StatusCode travels with it: a Bad value must not be served as a good one
        dv = getattr(getattr(data, "monitored_item", None), "Value", None)
        self.driver._on_change(node, val, getattr(dv, "StatusCode", None) or ua.StatusCode())

    def status_change_notification(self, status: Any) -> None:
        log.warning("device %s: subscription status changed: %s", self.driver.name, status)
