"""Typed alarm keys and the one owner of the active alarms (raise, clear, sync with a snapshot, the store calls).

An alarm's identity is an `AlarmKey` (device, kind, detail). Its string form (`str(key)`) is the one stored and
shown by the API, exactly as before keys were typed ("bms:comm", "bms:invalid_soc_pct", "pcs_readback:pcs",
"schedule:infeasible", "controller:cycle_error", "poi:poi_fallback", or a device's own alarm/fault word
"pcs:over_temp");
`AlarmKey.parse` is its inverse, the only place that string is taken apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from controller.clock import iso

if TYPE_CHECKING:
    from controller.clock import Clock
    from controller.cycle.snapshot import Snapshot
    from controller.store import Store

log = logging.getLogger("bess.cycle")

# kinds of alarm
COMM = "comm"  # a device without fresh readings
INVALID = "invalid"  # a device sent an implausible reading (detail: the point)
REPORTED = "reported"  # a device's own alarm or fault word (detail: the bit's name)
READBACK = "readback"  # the PCS read back another setpoint than was written (latched: cleared by a good write)
INFEASIBLE = "infeasible"  # the schedule cannot be delivered within the limits (latched: cleared by no one yet)
CYCLE_ERROR = "cycle_error"  # a control cycle raised (cleared by the next one that completes)
SERVICE = "service"  # a grid service cannot be provided as sold (latched: the service clears it; detail: what)
EXCHANGE_DOWN = "exchange_down"  # the auto-trader cannot reach the exchange (latched: cleared when it trades again)
POI_FALLBACK = "poi_fallback"  # the POI meter is lost: open-loop limits less a margin (cleared when it is back)

_READBACK_PREFIX = "pcs_readback"
_SERVICES = "services"  # the device part of a grid service's alarm: "services:fcr_reserve"
_INVALID_PREFIX = "invalid_"


@dataclass(frozen=True, slots=True)
class AlarmKey:
    """What an alarm is about. `device` is a device name, or "controller" / "schedule" for the controller's own."""

    device: str
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == REPORTED:
            return f"{self.device}:{self.detail}"
        if self.kind == INVALID:
            return f"{self.device}:{_INVALID_PREFIX}{self.detail}"
        if self.kind == READBACK:
            return f"{_READBACK_PREFIX}:{self.device}"
        if self.kind == SERVICE:
            return f"{self.device}:{self.detail}"
        return f"{self.device}:{self.kind}"

    @classmethod
    def parse(cls, text: str) -> "AlarmKey":
        """The key of a string form (`str(AlarmKey.parse(s)) == s` for every s with a colon)."""
        head, sep, tail = text.partition(":")
        if not sep:
            raise ValueError(f"alarm key: 'device:name' expected (got {text!r})")
        if head == _READBACK_PREFIX:
            return cls(tail, READBACK)
        if head == _SERVICES:
            return cls(head, SERVICE, tail)
        if tail == COMM:
            return cls(head, COMM)
        if (head, tail) in (("controller", CYCLE_ERROR), ("schedule", INFEASIBLE), ("trading", EXCHANGE_DOWN)):
            return cls(head, tail)
        if tail == POI_FALLBACK:
            return cls(head, POI_FALLBACK)
        if tail.startswith(_INVALID_PREFIX):
            return cls(head, INVALID, tail[len(_INVALID_PREFIX) :])
        return cls(head, REPORTED, tail)

    @property
    def latched(self) -> bool:
        """Held until cleared on purpose: a snapshot without it does not clear it."""
        return self.kind in (READBACK, INFEASIBLE, SERVICE, EXCHANGE_DOWN, POI_FALLBACK)


SCHEDULE_INFEASIBLE = AlarmKey("schedule", INFEASIBLE)
CYCLE_FAILED = AlarmKey("controller", CYCLE_ERROR)
EXCHANGE_DOWN_ALARM = AlarmKey("trading", EXCHANGE_DOWN)


def service_key(what: str) -> AlarmKey:
    """A grid service's own alarm ("services:fcr_reserve", "services:fcr_frequency"), raised and cleared by the
    cycle's service bookkeeping, not by a snapshot."""
    return AlarmKey(_SERVICES, SERVICE, what)


def comm_key(device: str) -> AlarmKey:
    return AlarmKey(device, COMM)


def readback_key(pcs: str) -> AlarmKey:
    return AlarmKey(pcs, READBACK)


def poi_fallback_key(meter: str) -> AlarmKey:
    return AlarmKey(meter, POI_FALLBACK)


@dataclass(frozen=True, slots=True)
class Alarm:
    key: AlarmKey
    cause: str
    message: str
    since: str

    def as_dict(self) -> dict[str, Any]:
        """The shape the API and the tests have always seen."""
        return {
            "key": str(self.key),
            "device": self.key.device,
            "cause": self.cause,
            "message": self.message,
            "since": self.since,
        }


# a cycle that changes more alarms than this (a gateway lost: every device behind it) logs them in one line
SYNC_LOG_LINES = 8


class Alarms:
    """The active alarms, in the order they were raised; every change is stored (idempotently) and logged."""

    def __init__(self, store: "Store", clock: "Clock"):
        self.store = store
        self.clock = clock
        self._active: dict[AlarmKey, Alarm] = {}

    def __contains__(self, key: AlarmKey) -> bool:
        return key in self._active

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self):
        return iter(self._active.values())

    def keys(self) -> tuple[AlarmKey, ...]:
        return tuple(self._active)

    def as_dicts(self) -> dict[str, dict[str, Any]]:
        """{string key: alarm dict}, in raise order."""
        return {str(k): a.as_dict() for k, a in self._active.items()}

    def raise_(self, key: AlarmKey, cause: str, message: str) -> None:
        if key not in self._active:
            now = self.clock.now()
            self._active[key] = Alarm(key, cause, message, iso(now))
            self.store.raise_alarm(str(key), key.device, cause, message, now)
            _log_raised(key, cause, message)

    def clear(self, key: AlarmKey) -> None:
        if self._active.pop(key, None) is not None:
            self.store.clear_alarm(str(key), self.clock.now())
            _log_cleared(key)

    def sync(self, snap: "Snapshot") -> None:
        """Raise what the snapshot shows, clear what it no longer shows (latched alarms stay); the changes are
        stored in one transaction, and logged one line each, or one line for all beyond SYNC_LOG_LINES."""
        want = wanted(snap)
        gone = [k for k in self._active if k not in want and not k.latched]
        new = [(k, c, m) for k, (c, m) in want.items() if k not in self._active]
        if not gone and not new:
            return  # the usual cycle: nothing changed
        now = self.clock.now()
        for key in gone:
            del self._active[key]
        for key, cause, msg in new:
            self._active[key] = Alarm(key, cause, msg, iso(now))
        self.store.change_alarms([(str(k), k.device, c, m, now) for k, c, m in new], [(str(k), now) for k in gone])
        if len(gone) + len(new) > SYNC_LOG_LINES:
            log.warning(
                "alarms changed",
                extra={"raised": [str(k) for k, _, _ in new], "cleared": [str(k) for k in gone]},
            )
            return
        for key in gone:
            _log_cleared(key)
        for key, cause, msg in new:
            _log_raised(key, cause, msg)


def _log_raised(key: AlarmKey, cause: str, message: str) -> None:
    log.warning("alarm raised", extra={"alarm": str(key), "device": key.device, "cause": cause, "detail": message})


def _log_cleared(key: AlarmKey) -> None:
    log.info("alarm cleared", extra={"alarm": str(key)})


def wanted(snap: "Snapshot") -> dict[AlarmKey, tuple[str, str]]:
    """The alarms a snapshot shows: {key: (cause, message)}, in the order they are raised."""
    want: dict[AlarmKey, tuple[str, str]] = {}
    for h in snap.devices:
        if h.stale:
            cause = h.cause or "stale"
            want[comm_key(h.name)] = (
                cause,
                f"{h.name}: {cause.replace('_', ' ')}, no fresh readings" + (f" ({h.error})" if h.error else ""),
            )
    for what, words in (("alarm", snap.alarms), ("fault", snap.faults)):
        for word in words:
            key = AlarmKey.parse(word)
            name = word.partition(":")[2]
            want[key] = (name, f"{key.device} reports {what} {name}")
    for bad in snap.invalid:  # an implausible reading: named with its point and raw value
        want[AlarmKey.parse(bad.key)] = ("invalid_reading", bad.message)
    return want


def reported_by(words: Iterable[str], device: str, ignore_suffix: str | None = None) -> bool:
    """Whether any of a snapshot's alarm/fault words comes from `device` (ignoring words ending in the suffix)."""
    return any(AlarmKey.parse(w).device == device and not (ignore_suffix and w.endswith(ignore_suffix)) for w in words)
