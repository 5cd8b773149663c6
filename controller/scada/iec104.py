"""The IEC 60870-5-104 face (c104): the plant as the controlled station of the grid operator's controlling
station. It reports measured values (plant power, setpoint, SoC, frequency, the aFRR and FCR parts and bands)
and states, spontaneously on change and on general interrogation, and takes the aFRR setpoint (C_SE_NC_1) and
FCR on/off (C_SC_NA_1). The address map is controller/scada/iec104_points.py (docs/scada-iec104.md).

Threads: c104 runs its own threads and calls `_on_connect` and the command callbacks there. Those read only
what never changes after start (the allow-list, the config) and hand a command to the event loop with
`loop.call_soon_threadsafe`; the controller is touched on the loop only. The values go out from `on_cycle`
(attached to Phase.AFTER_WRITE by the composition root), on the loop.

Who may connect: the controlling stations `scada.iec104.allow_clients` lists; with an empty list, only a face
that listens on loopback takes (local) clients. Everyone else is refused on connect.
"""

# no `from __future__ import annotations`: c104 checks a callback's signature against its evaluated annotations

import asyncio
import datetime
import ipaddress
import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import c104

from controller.config import ScadaIec104
from controller.scada.iec104_points import (
    AFRR_SETPOINT_IOA,
    COMMANDS,
    FCR_SWITCH_IOA,
    MEASURED,
    MONITOR,
    Value,
    deadbands,
    values,
    worth_sending,
)
from controller.scada.modbus import listens_on_loopback_only

if TYPE_CHECKING:
    from controller.cycle.state import PlantState
    from controller.scada.controls import ScadaPlant, WriteLimiter

log = logging.getLogger("bess.scada.iec104")

REFUSAL_LOG_EVERY_S = 60.0  # a refused client that keeps reconnecting is logged once a minute per address
REFUSAL_ADDRESSES_KEPT = 1024  # addresses whose last refusal log time is kept (bounded memory)
_TYPES = {p.type: getattr(c104.Type, p.type) for p in MONITOR + COMMANDS}
_GOOD = c104.Quality(0)
_MISSING = object()


class Iec104Face:
    """The IEC 104 server of one plant. `start()`/`stop()` on the loop; `on_cycle(state)` every cycle."""

    def __init__(
        self,
        plant: "ScadaPlant",
        cfg: ScadaIec104,
        state_dir: Path,
        limiter: "WriteLimiter | None" = None,
    ):
        self.plant = plant  # the commands it may give and the latest frozen state, never the Controller
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.limiter = limiter
        self.allowed = [ipaddress.ip_network(a, strict=False) for a in cfg.allow_clients]
        self.loopback_only = listens_on_loopback_only(cfg.host)
        self.deadbands = deadbands(cfg)
        self.server: c104.Server | None = None
        self.points: dict[str, Any] = {}
        self._sent: dict[str, tuple[Value, int]] = {}  # what each point last went out as: (value, quality bits)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards _pending and _drain_due (c104's threads and the loop)
        self._pending: dict[str, Any] = {}
        self._drain_due = False
        self._refusals_logged: dict[str, float] = {}
        self.connections_refused = 0
        self.commands_refused = 0
        self.spontaneous_sent = 0

    # ------------------------------------------------------------------ start / stop (the loop)
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        tls = self._transport_security() if self.cfg.tls.enabled else None
        server = c104.Server(
            ip=self.cfg.host,
            port=self.cfg.port,
            tick_rate_ms=100,
            max_connections=self.cfg.max_connections,  # c104 closes a client past it (its own threads)
            transport_security=tls,
        )
        server.on_connect(callable=self._on_connect)
        server.on_clock_sync(callable=self._on_clock_sync)
        station = server.add_station(common_address=self.cfg.common_address)
        for p in MONITOR:
            point = station.add_point(io_address=p.ioa, type=_TYPES[p.type])
            point.quality = c104.Quality.Invalid  # nothing known before the first cycle
            self.points[p.name] = point
        station.add_point(io_address=AFRR_SETPOINT_IOA, type=_TYPES["C_SE_NC_1"]).on_receive(
            callable=self._on_afrr_setpoint
        )
        station.add_point(io_address=FCR_SWITCH_IOA, type=_TYPES["C_SC_NA_1"]).on_receive(callable=self._on_fcr_switch)
        try:
            await asyncio.to_thread(server.start)
        except RuntimeError as e:  # c104: "Can't start server: Port in use?"
            raise OSError(f"IEC 104 face cannot listen on {self.cfg.host}:{self.cfg.port}: {e}") from e
        self.server = server
        self.on_cycle(self.plant.latest())
        log.info(
            "IEC 104 face listening",
            extra={
                "host": self.cfg.host,
                "port": self.cfg.port,
                "common_address": self.cfg.common_address,
                "tls": self.cfg.tls.enabled,
                "allow_clients": self.cfg.allow_clients,
                "read_only": self.cfg.read_only,
            },
        )

    def _transport_security(self) -> c104.TransportSecurity:
        """TLS: the server's certificate (configured, or self-signed in the state directory) and the controlling
        station's: pinned (client_certs) and/or issued by ca_file (chain and validity checked)."""
        t = self.cfg.tls
        cert, key = t.cert_file, t.key_file
        if cert is None or key is None:
            from controller.tls import make_self_signed

            cert_path, key_path = self.state_dir / "tls" / "iec104-cert.pem", self.state_dir / "tls" / "iec104-key.pem"
            if not cert_path.exists() or not key_path.exists():
                make_self_signed(cert_path, key_path, bind_host=self.cfg.host)
            cert, key = str(cert_path), str(key_path)
        sec = c104.TransportSecurity(validate=bool(t.ca_file), only_known=bool(t.client_certs))
        try:
            sec.set_certificate(cert=cert, key=key)
            if t.ca_file:
                sec.set_ca_certificate(cert=t.ca_file)
            for c in t.client_certs:
                sec.add_allowed_remote_certificate(cert=c)
        except ValueError as e:
            raise OSError(f"scada.iec104.tls: {e}") from e
        return sec

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            # off the loop: c104 joins its threads, and one of them may be handing a command to this loop
            await asyncio.to_thread(server.stop)
        with self._lock:
            self._pending.clear()

    # ------------------------------------------------------------------ values out (the loop)
    def on_cycle(self, state: "PlantState") -> None:
        """Phase.AFTER_WRITE: every point takes the state's value (a general interrogation returns it); a point
        that moved past its deadband, or whose quality changed, is also sent spontaneously."""
        if self.server is None:
            return
        vals = values(state)
        stale_plant = not state.online
        for p in MONITOR:
            new = vals[p.name]
            bits = (
                c104.Quality.Invalid
                if new is None
                else (c104.Quality.NonTopical if p.device and stale_plant else _GOOD)
            )
            point = self.points[p.name]
            if p.type == MEASURED:
                point.value = float(new) if new is not None else 0.0
            else:
                point.value = bool(new)
            point.quality = bits
            old, old_bits = self._sent.get(p.name, (_MISSING, -1))
            if old is _MISSING or old_bits != bits.value or worth_sending(old, new, self.deadbands.get(p.name, 0.0)):
                self._sent[p.name] = (new, bits.value)
                if old is not _MISSING and point.transmit(cause=c104.Cot.SPONTANEOUS):
                    self.spontaneous_sent += 1

    # ------------------------------------------------------------------ c104's threads
    def _on_connect(self, server: c104.Server, ip: str) -> bool:
        if self._allowed(ip):
            log.info("IEC 104 controlling station connected", extra={"client": ip})
            return True
        self.connections_refused += 1
        now = time.monotonic()
        if now - self._refusals_logged.get(ip, -math.inf) >= REFUSAL_LOG_EVERY_S:
            if len(self._refusals_logged) >= REFUSAL_ADDRESSES_KEPT:  # a scan from many addresses: start afresh
                self._refusals_logged.clear()
            self._refusals_logged[ip] = now
            log.warning(
                "IEC 104 connection refused: client not on scada.iec104.allow_clients",
                extra={"client": ip, "refused_total": self.connections_refused},
            )
        return False

    def _allowed(self, ip: str) -> bool:
        if not self.allowed:
            return self.loopback_only
        try:
            addr = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return False
        return any(addr in net for net in self.allowed)

    def _on_clock_sync(self, server: c104.Server, ip: str, date_time: datetime.datetime) -> c104.ResponseState:
        # the plant's clock is the host's (NTP); a controlling station does not set it
        log.info("IEC 104 clock synchronisation ignored (the host keeps its own time)", extra={"client": ip})
        return c104.ResponseState.SUCCESS

    def _on_afrr_setpoint(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        value = point.value
        if self.cfg.read_only or not isinstance(value, float) or not math.isfinite(value):
            return self._refuse("aFRR setpoint", value)
        return self._hand_over("afrr", value)

    def _on_fcr_switch(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        if self.cfg.read_only:
            return self._refuse("FCR switch", point.value)
        return self._hand_over("fcr", bool(point.value))

    def _refuse(self, what: str, value: Any) -> c104.ResponseState:
        self.commands_refused += 1
        why = "the face is read-only" if self.cfg.read_only else "not a finite number"
        log.warning(
            "IEC 104 command refused (negative confirmation)", extra={"command": what, "value": value, "reason": why}
        )
        return c104.ResponseState.FAILURE

    def _hand_over(self, key: str, value: Any) -> c104.ResponseState:
        """Give a command to the loop. Commands that come faster than the loop takes them are coalesced: the
        loop applies the newest of each kind, once."""
        loop = self._loop
        with self._lock:
            self._pending[key] = value
            schedule = not self._drain_due
            self._drain_due = True
        if schedule:
            try:
                assert loop is not None
                loop.call_soon_threadsafe(self._drain)
            except (RuntimeError, AssertionError):  # the loop is closing: nothing can take the command
                with self._lock:
                    self._pending.pop(key, None)
                    self._drain_due = False
                return c104.ResponseState.FAILURE
        return c104.ResponseState.SUCCESS

    # ------------------------------------------------------------------ commands in (the loop)
    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._drain_due = False
        if self.server is None:
            return
        if "afrr" in pending:
            try:
                self.plant.commands.set_afrr_setpoint(pending["afrr"], source="scada-iec104")
            except ValueError as e:
                log.warning("IEC 104 aFRR setpoint not taken", extra={"value": pending["afrr"], "reason": str(e)})
        if "fcr" in pending:
            self._switch_fcr(pending["fcr"])

    def _switch_fcr(self, on: bool) -> None:
        if self.limiter is not None and not self.limiter.allow():
            self.limiter.log_refusal(log, "IEC 104 FCR switch refused: SCADA writes over the rate limit", on=on)
            return
        try:
            self.plant.commands.set_fcr(on, source="scada-iec104")
        except ValueError as e:
            log.warning("IEC 104 FCR switch refused by the controller", extra={"on": on, "reason": str(e)})
            return
        self.plant.audit("scada-iec104", "fcr", {"on": on})
