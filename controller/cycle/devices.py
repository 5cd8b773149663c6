"""Device links: one driver per configured device, read on its own rhythm (its poll interval, by a task of its
own; the cycle takes the freshest readings without waiting) or, before that starts, by the cycle within its
deadline, with health and staleness; grouped into the plant's units and its POI meter, with a snapshot per unit
and the plant's.

Stale means unknown: after 2 failed reads in a row, or 3 poll periods (or `stale_after_s`) without a good
read, a device's readings are withheld from the snapshot, never served as last-good. A single reading the
driver could not trust is unknown too, and listed in the snapshot (an alarm naming it); an alarm or fault
word that cannot be decoded is an alarm.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from controller.clock import Clock
from controller.config import Device, SiteConfig
from controller.cycle.snapshot import DeviceHealth, InvalidReading, Snapshot
from drivers.base import DeviceDriver, Reading
from drivers.errors import DeviceError, DeviceTimeout, Disconnected
from drivers.modbus import ModbusPool
from drivers.profile import Profile

log = logging.getLogger("bess.devices")

FAILED_READS_STALE = 2
PERIODS_STALE = 3
# A device behind a shared gateway that has stopped answering is asked every 2, 4, then at most this many poll
# intervals: each unanswered request holds the gateway (one request at a time) for the device's timeout, time the
# other devices behind it need. OpenEMS's Modbus bridge rests its defective components the same way.
GATEWAY_REST_MAX_PERIODS = 8
# The start-up read (DeviceSet.first_contact) waits for a device at most this many of its own timeouts: the most its
# driver's first read takes when every step runs to its timeout (OPC UA: a connect of 4, node resolution 1, the
# subscription up to 3, the read 1); a bound for a driver that would not give up, not reached by one that does.
FIRST_CONTACT_TIMEOUTS = 10
# A device behind a gateway has its reads start early enough that one running to its timeout (a silent device's)
# has ended, with this margin, before the cycle's writes on the shared connection; at most MAX_READ_LEAD of a
# period ahead (the last cycle's writes are done by then). Left at the usual lead, a silent BMS's read (0.5 s timeout
# against a 0.4 s lead) held the connection into the cycle, and the writes of the units behind it waited its end.
READ_LEAD_MARGIN_S = 0.05
MAX_READ_LEAD = 0.9
ALARM_WORDS = ("alarm_bits", "fault_bits")
_MAX_BITS = 64
MODBUS_PROTOCOLS = ("modbus", "sunspec")  # the protocols on a Modbus TCP connection (a gateway's too)


def make_driver(
    name: str,
    dev: Device,
    profile: Profile,
    clock: Clock,
    rating_mw: float | None = None,
    pool: ModbusPool | None = None,
) -> DeviceDriver:
    """The driver for a device's protocol; power readings beyond +-1.5x `rating_mw` are implausible. Modbus
    devices given a `pool` share one connection per host:port (a gateway; `connections` if it takes more)."""
    if dev.protocol in MODBUS_PROTOCOLS:
        from drivers.modbus import ModbusDriver
        from drivers.sunspec import SunSpecDriver

        driver_class = ModbusDriver if dev.protocol == "modbus" else SunSpecDriver
        return driver_class(
            name,
            profile,
            dev.host,
            dev.port,
            unit_id=dev.unit_id,
            timeout_s=dev.timeout_s,
            clock=clock,
            rating_mw=rating_mw,
            pool=pool,
            connections=dev.connections,
        )
    if dev.protocol == "opcua":
        from drivers.opcua import OpcUaDriver

        return OpcUaDriver(
            name,
            profile,
            dev.endpoint,
            timeout_s=dev.timeout_s,
            clock=clock,
            subscribe=dev.subscribe,
            publishing_interval_s=profile.publishing_interval_s,
            rating_mw=rating_mw,
        )
    raise ValueError(f"device {name}: unknown protocol {dev.protocol!r}")


@dataclass
class DeviceLink:
    """A device as the cycle sees it: its driver, its last good readings, and how its polls went."""

    name: str
    role: str
    config: Device
    profile: Profile
    driver: DeviceDriver
    readings: dict[str, Reading] = field(default_factory=dict)
    last_good_ts: float | None = None
    last_poll_ts: float | None = None
    failures: int = 0
    last_error: DeviceError | None = None
    request_latency_s: float = 0.0
    errors_total: int = 0
    behind_gateway: bool = False  # its host:port serves other devices of the site too (Modbus unit ids)
    _inflight: asyncio.Task | None = field(default=None, repr=False)  # a read that outlived its cycle's deadline
    _late: bool = False  # the read in flight was counted as failed at its deadline
    # Read on its own rhythm (run_polls), the device also gets its heartbeat there: the cycle counts it up
    # (Dispatcher.heartbeat), the device's task writes each new count after a good read, off the cycle's writes.
    # A cycle that stops counting stops the writes, so the device's watchdog still sees the controller stop.
    own_rhythm: bool = False
    heartbeat_count: int | None = None
    # the last good read's readings keyed `<device>.<point>` (a snapshot's `points`): set with `readings` in _read,
    # on the device's own task, not rebuilt by every cycle's snapshot of every unit
    named: dict[str, Reading] = field(default_factory=dict, repr=False)
    _heartbeat_written: int | None = None
    # the rhythm's next look moved (rephase): where to, and the sleep of its task that a move cuts short
    _rephase_at: float | None = field(default=None, repr=False)
    _sleep: asyncio.Future | None = field(default=None, repr=False)

    def due(self, now: float) -> bool:
        # a small margin so a device polled every cycle is not skipped by jitter
        interval_s = self.config.poll_interval_s * self.rest_periods()
        return self.last_poll_ts is None or now - self.last_poll_ts >= interval_s * 0.9

    def read_lead_s(self, lead_s: float, tick_s: float) -> float:
        """How long before a cycle this device's reads start, given the usual `lead_s`: behind a gateway, long
        enough for a read that runs to its timeout to end before the cycle's writes on the shared connection (at most
        MAX_READ_LEAD of the tick); on a connection of its own, `lead_s` (its freshest readings, and nobody else's
        writes wait for it)."""
        if not self.behind_gateway:
            return lead_s
        return max(lead_s, min(self.config.timeout_s + READ_LEAD_MARGIN_S, MAX_READ_LEAD * tick_s))

    def rest_periods(self) -> int:
        """Poll intervals between reads: 1, or for a silent device behind a gateway 2, 4, ... up to
        GATEWAY_REST_MAX_PERIODS (it is stale all the while; its first good answer ends the rest)."""
        if not self.behind_gateway or self.failures < FAILED_READS_STALE:
            return 1
        return min(2 ** (self.failures - FAILED_READS_STALE + 1), GATEWAY_REST_MAX_PERIODS)

    def begin(self, now: float) -> asyncio.Task | None:
        """Start a read of the device without waiting for it; returns the read (None when one is still in flight).

        A read still unanswered when the next one is due counts as a failed read (a timeout) then, and at every
        later due time while it runs, so a silent device goes stale after FAILED_READS_STALE poll intervals. The
        request itself is not cancelled (a cancelled Modbus request leaves its late answer in the connection, where
        the next request would take it for its own): it runs on to the driver's own timeout, and a late good answer
        is taken as the freshest readings (dated when it was asked)."""
        if self._inflight is not None:
            self._late = True  # its own failure, when it comes, was counted here already
            self._failed(DeviceTimeout(self.name, "read: the last request is still unanswered"))
            return None
        return self._start(now)

    def _start(self, now: float) -> asyncio.Task:
        self.last_poll_ts = now
        self._late = False
        task = asyncio.ensure_future(self._read(now))
        self._inflight = task
        return task

    async def read_now(self, now: float) -> bool:
        """Read the device now, outside its rhythm (the FCR fast path reads the meter so): a read already in flight
        (its poll's, or another caller's) is awaited instead of a second request; otherwise a read starts as a poll
        would, so the rhythm finds the device not due and skips it. Readings, timestamps and failures are the
        link's, as for a poll. Waits until the driver answers or gives up; returns whether that read was good.
        A silent device resting behind a gateway (rest_periods) is not asked before its rhythm's next turn: False
        at once, so a fast reader does not hold the gateway for a timeout ten times a second."""
        task = self._inflight
        if task is None:
            if self.rest_periods() > 1 and not self.due(now):
                return False
            task = self._start(now)
        await asyncio.wait({task})  # not cancelled with its caller: the read may be the rhythm's own
        return not task.cancelled() and task.result()

    async def poll(self, now: float, timeout_s: float | None = None, deadline: str = "the cycle's deadline") -> None:
        """Read the device, waiting at most `timeout_s` (None: until the driver answers or gives up); a read still
        pending then counts as a failed read at once (see begin), so a slow device never stretches the cycle. A read
        someone started since the device was last due (read_now: the FCR fast path's) is waited for as its own."""
        task = self._inflight if self._inflight is not None and not self.due(now) else self.begin(now)
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            self._late = True
            self._failed(DeviceTimeout(self.name, f"read: no answer by {deadline} ({timeout_s:.3g} s)"))

    async def run_polls(self, clock: Clock, tick_s: float, first_s: float) -> None:
        """The device's own rhythm (started by DeviceSet.start_polling): after `first_s`, every `tick_s` real
        seconds a read is started when the device is due (its poll interval, or its rest behind a gateway), and
        never waited for: the cycle takes the freshest readings. `rephase` moves the next look (and the rhythm
        with it). Ends when cancelled (its read in flight runs on)."""
        next_t = time.monotonic() + first_s
        self.own_rhythm = True
        try:
            await self._poll_rhythm(clock, tick_s, next_t)
        finally:
            self.own_rhythm = False
            self._rephase_at = None  # a move for this rhythm is not one for the next

    def rephase(self, next_read_mono: float) -> None:
        """The rhythm's next look at `next_read_mono` (time.monotonic()), then every tick from there: the cycle's
        rhythm restarted (an early wake-up), and the reads follow it. A read in flight runs on; the next one moves."""
        self._rephase_at = next_read_mono
        if self._sleep is not None and not self._sleep.done():
            self._sleep.set_result(True)

    async def _poll_rhythm(self, clock: Clock, tick_s: float, next_t: float) -> None:
        while True:
            tick = await self._next_tick(next_t, tick_s)
            now = clock.now()
            # a tick re-phased ahead of the regular one it replaces counts as that one (see _due_on_tick)
            if self._due_on_tick(now, max(0.0, next_t - tick) * clock.speed):
                self.begin(now)
            next_t = tick + tick_s
            if next_t < time.monotonic():
                next_t = time.monotonic() + tick_s  # a stalled loop: never a burst of catch-up reads

    async def _next_tick(self, regular_t: float, tick_s: float) -> float:
        """Sleep until the rhythm's next look: `regular_t`, or where a rephase moved it since. A look is postponed
        by less than a tick (at most to `regular_t + tick_s`), so a storm of early wake-ups cannot starve the
        reads; it may come earlier by any share of a tick."""
        tick = regular_t
        while True:
            if self._rephase_at is not None:  # moved, before this sleep or during it
                tick = min(self._rephase_at, regular_t + tick_s)
                self._rephase_at = None
            if not await self._sleep_until(tick):
                return tick

    async def _sleep_until(self, t: float) -> bool:
        """Sleep until `t` (time.monotonic()), as asyncio.sleep does; True when a rephase cut it short."""
        loop = asyncio.get_running_loop()
        self._sleep = woken = loop.create_future()
        timer = loop.call_later(max(0.0, t - time.monotonic()), _settle, woken)
        try:
            return await woken
        finally:
            timer.cancel()
            self._sleep = None

    def _due_on_tick(self, now: float, early_s: float) -> bool:
        """Whether a look of the rhythm at `now` starts a read. A look re-phased `early_s` (clock seconds) ahead of
        the regular one it replaces asks whether the device is due at that regular one, so a device read on every
        tick is not skipped for a tick by the move; but a read still in flight is counted as unanswered only once
        the next is really due (begin), and a device resting behind a gateway is never asked before its rest ends."""
        if early_s > 0 and self._inflight is None and self.rest_periods() == 1:
            return self.due(now + early_s)
        return self.due(now)

    async def _read(self, asked_ts: float) -> bool:
        """One read of the device into the link; whether it was good."""
        try:
            readings = await self._timed_read()
        except asyncio.CancelledError:
            raise
        except DeviceError as e:
            self._failed(e, count=not self._late)  # a late failure was counted at the deadline already
            return False
        except Exception as e:  # a driver bug must not kill the cycle: treat it as a failed read, loudly
            log.exception("driver raised an untyped error", extra={"device": self.name})
            self._failed(DeviceError(self.name, f"{type(e).__name__}: {e}"), count=not self._late)
            return False
        else:
            self.readings = readings
            self.named = {f"{self.name}.{k}": r for k, r in readings.items()}
            if self.failures:
                log.info("device answers again", extra={"device": self.name, "after_failures": self.failures})
            self.failures = 0
            self.last_error = None
            self.last_good_ts = asked_ts
            await self._beat()
            return True
        finally:
            self._inflight = None

    async def _timed_read(self) -> dict[str, Reading]:
        """The driver's read, its time kept as the link's request latency: the read's own, not the heartbeat
        write that follows a good one (_beat)."""
        t0 = time.perf_counter()
        try:
            return await self.driver.read()
        finally:
            self.request_latency_s = time.perf_counter() - t0

    async def _beat(self) -> None:
        """The cycle's newest heartbeat count, written once (after a good read: a failing device is left alone)."""
        count = self.heartbeat_count
        if count is None or count == self._heartbeat_written:
            return
        try:
            await self.driver.write("heartbeat", count, verify=False)
            self._heartbeat_written = count
        except DeviceError as e:
            log.warning("heartbeat write failed", extra={"device": self.name, "cause": e.cause, "error": str(e)})

    def count_failure(self, e: DeviceError) -> None:
        """A request (read or write) that failed: counted against the device, which goes stale after
        FAILED_READS_STALE of them in a row, and so the plant (or its unit) safe."""
        self.failures += 1
        self.errors_total += 1
        self.last_error = e

    def _failed(self, e: DeviceError, count: bool = True) -> None:
        if self.last_error is None or type(e) is not type(self.last_error):
            log.warning("device read failed", extra={"device": self.name, "cause": e.cause, "error": str(e)})
        if count:
            self.count_failure(e)
        self.last_error = e

    async def stop_reading(self) -> None:
        """End a read still waiting on a silent device (on close)."""
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._inflight = None

    def health(self, now: float, stale_after_s: float) -> DeviceHealth:
        window = max(PERIODS_STALE * self.config.poll_interval_s, stale_after_s)
        stale = self.last_good_ts is None or self.failures >= FAILED_READS_STALE or now - self.last_good_ts > window
        return DeviceHealth(
            name=self.name,
            ok=self.failures == 0 and self.last_good_ts is not None,
            stale=stale,
            last_good_ts=self.last_good_ts,
            failures=self.failures,
            cause=self.last_error.cause if self.last_error else ("never_read" if self.last_good_ts is None else None),
            error=str(self.last_error) if self.last_error else None,
        )

    def value(self, point: str) -> float | None:
        r = self.readings.get(point)
        if r is None or r.value is None or isinstance(r.value, str):
            return None
        v = float(r.value)
        return v if math.isfinite(v) else None  # a driver that let NaN through still gives unknown

    def bit_names(self, point: str) -> list[str]:
        """Names of the set bits of a bit-field point (`alarm_bits`), from the profile; none when the word
        cannot be decoded (undecodable_words names that as an alarm of its own)."""
        r = self.readings.get(point)
        bits = _word(r.value) if r is not None else None
        if not bits:
            return []
        names = (self.profile.points[point].bits or {}) if point in self.profile.points else {}
        return [names.get(b, f"bit{b}") for b in range(_MAX_BITS) if bits >> b & 1]

    def invalid(self) -> list[InvalidReading]:
        """The readings of the last poll the driver could not trust."""
        return [
            InvalidReading(self.name, n, r.raw or "?", r.invalid)
            for n, r in self.readings.items()
            if r.invalid is not None
        ]

    def undecodable_words(self) -> list[InvalidReading]:
        """Alarm/fault words of the profile that the last poll did not bring as a whole number >= 0: an
        alarm word that cannot be read must not read as 'no alarms'."""
        out = []
        for point in ALARM_WORDS:
            if point not in self.profile.points:
                continue
            r = self.readings.get(point)
            if r is not None and r.invalid is not None:
                out.append(InvalidReading(self.name, point, r.raw or "?", r.invalid))
            elif r is None or _word(r.value) is None:
                out.append(
                    InvalidReading(
                        self.name,
                        point,
                        "missing" if r is None else repr(r.value)[:80],
                        "not an alarm word (a whole number >= 0)",
                    )
                )
        return out


def _settle(sleep: asyncio.Future) -> None:
    """A rhythm's sleep that ran its time (not cut short by a rephase)."""
    if not sleep.done():
        sleep.set_result(False)


def _word(v: object) -> int | None:
    """A bit field's value as an int: a whole number 0 <= v < 2**64, else None (cannot be decoded)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        return None
    w = int(v)
    return w if 0 <= w < 1 << _MAX_BITS else None


@dataclass(frozen=True)
class UnitLinks:
    """One unit as the cycle sees it: its BMS and PCS links, its rating and its battery's capacity."""

    unit: str
    bms: DeviceLink
    pcs: DeviceLink
    rated_mw: float
    capacity_mwh: float


class DeviceSet:
    """All device links of the site, grouped into units (each a BMS and a PCS) and the optional POI meter;
    builds each unit's frozen snapshot and the plant's."""

    def __init__(self, config: SiteConfig, clock: Clock, drivers: dict[str, DeviceDriver] | None = None):
        self.config = config
        self.clock = clock
        self.links: dict[str, DeviceLink] = {}
        plan = config.unit_plan()
        # a device's power readings are plausible within +-1.5x its unit's rating (a profile may state its own;
        # the one implicit unit is rated at the site's largest power limit); the meter's, the plant's
        rating_of = {n: u.rated_mw for u in plan for n in (u.pcs_name, u.bms_name)}
        plant_mw = max(sum(u.rated_mw for u in plan), config.limits.grid_limit_mw)
        self.pool = ModbusPool()  # devices behind one gateway share its connection
        # devices per Modbus host:port: more than one there means a gateway (see rest_periods)
        modbus = Counter((d.host, d.port) for d in config.devices.values() if d.protocol in MODBUS_PROTOCOLS)
        for name, dev in config.devices.items():
            profile = config.load_profile(dev)
            rating_mw = rating_of.get(name, plant_mw)
            driver = (drivers or {}).get(name) or make_driver(name, dev, profile, clock, rating_mw, self.pool)
            gateway = dev.protocol in MODBUS_PROTOCOLS and modbus[(dev.host, dev.port)] > 1
            self.links[name] = DeviceLink(name, dev.role, dev, profile, driver, behind_gateway=gateway)
        self.units = [
            UnitLinks(u.unit, self.links[u.bms_name], self.links[u.pcs_name], u.rated_mw, u.capacity_mwh) for u in plan
        ]
        found = config.meter()
        self.meter: DeviceLink | None = self.links[found[0]] if found else None
        # a one-unit plant's BMS and PCS (of a plant of several: the first unit's)
        self.bms = self.units[0].bms
        self.pcs = self.units[0].pcs
        self._pollers: list[asyncio.Task] = []
        self._tick_s = self._lead_s = 0.0  # the rhythm's (start_polling)

    @property
    def polling(self) -> bool:
        """True while every device is read on its own rhythm (start_polling), not by the cycle."""
        return bool(self._pollers)

    def start_polling(self, tick_s: float, cycle_in_s: float, lead_s: float) -> None:
        """Each device read by its own task from now on (DeviceLink.run_polls), every `tick_s` (the cycle's
        period), each read starting `lead_s` before a cycle (the next in `cycle_in_s`), a device behind a gateway
        earlier (DeviceLink.read_lead_s); the cycle then takes the freshest readings without waiting."""
        if self._pollers:
            return
        self._tick_s, self._lead_s = tick_s, lead_s
        self._pollers = [
            asyncio.create_task(
                link.run_polls(self.clock, tick_s, max(0.0, cycle_in_s - link.read_lead_s(lead_s, tick_s))),
                name=f"poll-{link.name}",
            )
            for link in self.links.values()
        ]

    def rephase(self, next_cycle_mono: float) -> None:
        """Each device's next read moved to its lead before the cycle at `next_cycle_mono` (time.monotonic()), and
        on from there every tick, after the cycle's rhythm restarted (DeviceLink.rephase); nothing while the
        devices have no rhythm of their own."""
        if self._pollers:
            for link in self.links.values():
                link.rephase(next_cycle_mono - link.read_lead_s(self._lead_s, self._tick_s))

    async def stop_polling(self) -> None:
        """No new reads (those in flight run on to their answer or timeout; close() ends them)."""
        tasks, self._pollers = self._pollers, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def poll(self, now: float, force: bool = False, timeout_s: float | None = None) -> None:
        """Read every due device (all with `force`) concurrently, each waiting at most `timeout_s` (see
        DeviceLink.poll); `force` waits for every answer."""
        due = [link for link in self.links.values() if force or link.due(now)]
        if due:
            await asyncio.gather(*(link.poll(now, None if force else timeout_s) for link in due))

    async def first_contact(self, now: float) -> None:
        """On start, before the first cycle: every device connected and read once, all at once, each waited for
        until its driver answers or gives up (a connect, SunSpec's model discovery or OPC UA's node resolution, then
        the read: each request bounded by the device's `timeout_s`), and at most FIRST_CONTACT_TIMEOUTS of its
        `timeout_s`. A device that is there answers before the cycle needs it, not as a comm alarm; one that is
        not fails here as at any read (its comm alarm comes with the first cycle)."""
        await asyncio.gather(
            *(
                link.poll(now, FIRST_CONTACT_TIMEOUTS * link.config.timeout_s, "the start-up read's deadline")
                for link in self.links.values()
            )
        )

    async def catch_up(self, now: float, timeout_s: float) -> None:
        """After the event loop stalled (no device could be read on its rhythm either): every due device read now
        and the reads in flight awaited, all at most `timeout_s`, as the cycle read before its devices had a
        rhythm of their own; the readings would be stale otherwise. A read still pending then is counted by its
        device's own rhythm (DeviceLink.begin)."""
        pending = []
        for link in self.links.values():
            task = link._inflight if link._inflight is not None else (link.begin(now) if link.due(now) else None)
            if task is not None:
                pending.append(task)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self) -> None:
        await self.stop_polling()
        for link in self.links.values():
            await link.stop_reading()
            try:
                await link.driver.close()
            except Exception:
                log.exception("closing driver failed", extra={"device": link.name})

    def all_fresh_since(self, ts: float) -> bool:
        """True when every device has had a good read at or after `ts` (start-up gate)."""
        return all(link.last_good_ts is not None and link.last_good_ts >= ts for link in self.links.values())

    def unanswered_since(self, names: tuple[str, ...], ts: float) -> tuple[str, ...]:
        """Of `names`, the devices without a good read at or after `ts` (the start-up gate)."""
        return tuple(n for n in names if self.links[n].last_good_ts is None or self.links[n].last_good_ts < ts)

    def unit_snapshot(self, u: UnitLinks, now: float) -> Snapshot:
        """The unit's process image: its BMS's and PCS's readings; stale, lost and alarmed devices are its own."""
        stale_after = self.config.limits.stale_after_s
        healths = tuple(link.health(now, stale_after) for link in (u.bms, u.pcs))
        stale = tuple(h.name for h in healths if h.stale)
        comm_loss = tuple(
            h.name
            for h, link in zip(healths, (u.bms, u.pcs))
            if isinstance(link.last_error, (Disconnected, DeviceTimeout)) and h.stale
        )

        def v(link: DeviceLink, point: str) -> float | None:
            return None if link.name in stale else link.value(point)

        alarms: list[str] = []
        faults: list[str] = []
        invalid: dict[str, InvalidReading] = {}
        points: dict[str, Reading] = {}
        for link in (u.bms, u.pcs):
            if link.name in stale:
                continue
            alarms += [f"{link.name}:{n}" for n in link.bit_names("alarm_bits")]
            faults += [f"{link.name}:{n}" for n in link.bit_names("fault_bits")]
            for bad in link.undecodable_words():
                alarms.append(bad.key)  # the key of its detailed alarm too (see InvalidReading.key)
                invalid[bad.key] = bad
        for link in (u.bms, u.pcs):
            if link.name not in stale:
                points.update(link.named)
                for bad in link.invalid():
                    invalid.setdefault(bad.key, bad)
        return Snapshot(
            ts=now,
            soc_pct=v(u.bms, "soc_pct"),
            power_mw=v(u.pcs, "power_mw"),
            temperature_max_c=v(u.bms, "temperature_max_c"),
            temperature_min_c=v(u.bms, "temperature_min_c"),
            bms_allowed_charge_mw=v(u.bms, "allowed_charge_mw"),
            bms_allowed_discharge_mw=v(u.bms, "allowed_discharge_mw"),
            setpoint_readback_mw=v(u.pcs, "setpoint_mw"),
            alarms=tuple(alarms),
            faults=tuple(faults),
            stale=stale,
            comm_loss=comm_loss,
            devices=healths,
            points=points,
            invalid=tuple(invalid.values()),
        )

    def meter_health(self, now: float) -> DeviceHealth | None:
        return self.meter.health(now, self.config.limits.stale_after_s) if self.meter is not None else None

    def plant_snapshot(self, unit_snaps: list[Snapshot], now: float) -> Snapshot:
        """The plant's process image from its units' (for the record, the status and the alarms): one unit's is
        its own; of several, totals (power and allowed powers summed, SoC energy-weighted, the hottest and the
        coldest cell) and every unit's alarms, stale and lost devices. The meter's health joins `devices` (a lost
        meter raises its comm alarm) and its points join `points`, but not `stale`: the meter is not the plant."""
        meter = self.meter_health(now)
        extra = (meter,) if meter is not None else ()
        meter_points = self.meter.named if self.meter is not None and meter is not None and not meter.stale else {}
        if len(unit_snaps) == 1:
            s = unit_snaps[0]
            if not extra:
                return s
            return dataclasses.replace(s, devices=s.devices + extra, points={**s.points, **meter_points})
        return _totals(unit_snaps, [u.capacity_mwh for u in self.units], now, extra, meter_points)

    def snapshot(self, now: float) -> Snapshot:
        """The plant's snapshot of now (see plant_snapshot)."""
        return self.plant_snapshot([self.unit_snapshot(u, now) for u in self.units], now)


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _totals(
    snaps: list[Snapshot],
    capacities: list[float],
    now: float,
    extra: tuple[DeviceHealth, ...],
    meter_points: dict[str, Reading],
) -> Snapshot:
    """Several units' snapshots as the plant's (see DeviceSet.plant_snapshot); unknown values are left out of
    the totals, all unknown is unknown."""
    socs = [(s.soc_pct, c) for s, c in zip(snaps, capacities) if s.soc_pct is not None]
    energy = sum(c for _, c in socs)
    t_max = [s.temperature_max_c for s in snaps if s.temperature_max_c is not None]
    t_min = [s.temperature_min_c for s in snaps if s.temperature_min_c is not None]
    points: dict[str, Reading] = {}
    for s in snaps:
        points.update(s.points)
    points.update(meter_points)
    return Snapshot(
        ts=now,
        soc_pct=sum(v * c for v, c in socs) / energy if socs and energy > 0 else None,
        power_mw=_sum([s.power_mw for s in snaps]),
        temperature_max_c=max(t_max) if t_max else None,
        temperature_min_c=min(t_min) if t_min else None,
        bms_allowed_charge_mw=_sum([s.bms_allowed_charge_mw for s in snaps]),
        bms_allowed_discharge_mw=_sum([s.bms_allowed_discharge_mw for s in snaps]),
        setpoint_readback_mw=_sum([s.setpoint_readback_mw for s in snaps]),
        alarms=tuple(a for s in snaps for a in s.alarms),
        faults=tuple(f for s in snaps for f in s.faults),
        stale=tuple(n for s in snaps for n in s.stale),
        comm_loss=tuple(n for s in snaps for n in s.comm_loss),
        devices=tuple(h for s in snaps for h in s.devices) + extra,
        points=points,
        invalid=tuple(i for s in snaps for i in s.invalid),
    )
