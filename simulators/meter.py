"""The POI meter simulator: a grid meter (SunSpec models 1 + 203, or a plain Modbus map) that measures the sum of
the units' AC power minus the plant's aux load and its losses, and a grid frequency around 50 Hz that wanders
slowly (a seeded Ornstein-Uhlenbeck process, as a synchronous grid's frequency does over minutes) with
measurement noise on top; steps and ramps are injected through the control API (simulators/control.py).

Signs: `poi_mw` is ours (positive = export). What the registers carry follows the profile's `power_mw` point:
with `sign: -1` (config/profiles/sunspec-meter.yaml) the meter's W is positive for import, as at most sites.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.sunspec import METER_MODELS
from simulators.modbus_server import ModbusSimServer

INT16_MAX = 32767


@dataclass
class GridParams:
    nominal_hz: float = 50.0
    wander_sigma_hz: float = 0.02  # spread of the slow wander (stationary standard deviation)
    wander_tau_s: float = 120.0  # how slowly it wanders: correlation time
    noise_hz: float = 0.002  # measurement noise, per sample
    seed: int = 13


class GridFrequency:
    """The grid's frequency: a base (nominal, moved by steps and ramps) plus a slow wander plus noise.
    Pure arithmetic; time (dt) is passed in; the random source is seeded, so a run can be repeated."""

    def __init__(self, params: GridParams | None = None):
        self.p = params or GridParams()
        self._rng = random.Random(self.p.seed)
        self.base_hz = self.p.nominal_hz
        self.wander_hz = 0.0
        self.wander = True
        self.hz = self.base_hz
        self._ramp: tuple[float, float, float, float] | None = None  # (from, to, duration_s, elapsed_s)

    def step_hz(self, delta_hz: float) -> None:
        """A step: the base jumps by delta_hz now (a ramp in progress stops)."""
        self._ramp = None
        self.base_hz += delta_hz
        self.hz = self._sample()

    def ramp_to(self, target_hz: float, ramp_s: float) -> None:
        """A linear ramp of the base from where it is to target_hz over ramp_s clock seconds."""
        self._ramp = (self.base_hz, target_hz, ramp_s, 0.0)

    def set_hz(self, hz: float) -> None:
        """The base at hz now, no ramp."""
        self._ramp = None
        self.base_hz = hz
        self.hz = self._sample()

    def set_wander(self, on: bool) -> None:
        """Wander and noise on or off (off: the frequency is exactly the base, for tests that compare)."""
        self.wander = on
        if not on:
            self.wander_hz = 0.0
        self.hz = self._sample()

    @property
    def ramping(self) -> bool:
        return self._ramp is not None

    def step(self, dt_s: float) -> float:
        """Advance dt_s seconds; returns the frequency measured now."""
        if dt_s > 0 and self._ramp is not None:
            start, target, duration, elapsed = self._ramp
            elapsed += dt_s
            if elapsed >= duration:
                self.base_hz, self._ramp = target, None
            else:
                self.base_hz = start + (target - start) * elapsed / duration
                self._ramp = (start, target, duration, elapsed)
        if dt_s > 0 and self.wander:
            # exact discretisation of the OU process: stays near 0 with spread sigma whatever dt is
            a = math.exp(-dt_s / self.p.wander_tau_s)
            self.wander_hz = a * self.wander_hz + self.p.wander_sigma_hz * math.sqrt(1 - a * a) * self._rng.gauss()
        self.hz = self._sample()
        return self.hz

    def _sample(self) -> float:
        if not self.wander:
            return self.base_hz
        return self.base_hz + self.wander_hz + self.p.noise_hz * self._rng.gauss()


@dataclass
class MeterParams:
    aux_load_mw: float = 0.0  # the plant's own consumption (HVAC, auxiliaries), always drawn
    loss_fraction: float = 0.01  # transformer and cable losses, a fraction of the units' |total power|
    voltage_ll_v: float = 20000.0  # medium voltage at the POI
    rating_mw: float = 10.0  # sizes the scale factors so that 1.5x this fits the int16 points
    serial: str = "SIM-METER-0001"


def scale_factor_for(max_abs: float, limit: int = INT16_MAX) -> int:
    """The smallest SunSpec scale factor >= 0 (10**sf per count) with which max_abs fits `limit` counts."""
    sf = 0
    while max_abs / 10**sf > limit and sf < 10:
        sf += 1
    return sf


class Meter:
    """The meter behind one Modbus face. `sources` give each unit's AC power (MW, + discharge) when called."""

    def __init__(
        self,
        server: ModbusSimServer,
        sources: Sequence[Callable[[], float]],
        params: MeterParams | None = None,
        grid: GridFrequency | None = None,
    ):
        self.server = server
        self.sources = list(sources)
        self.p = params or MeterParams()
        self.grid = grid or GridFrequency()
        self.poi_mw = 0.0
        self.losses_mw = 0.0
        self.exported_mwh = 0.0
        self.imported_mwh = 0.0
        self._sunspec = hasattr(server, "layout")
        # the meter model the layout carries (201-204 share their points): refs below are written as 203's
        self._model = (
            next((m for m in getattr(server, "layout", None).models if m in METER_MODELS), 203)
            if self._sunspec
            else 203
        )
        power = server.points.get(server.aliases.get("power_mw", "power_mw"))
        self._sign = power.sign if power is not None else -1  # registers: + import unless the profile says
        if self._sunspec:
            self._init_sunspec()
        self.step(0.0)

    def _init_sunspec(self) -> None:
        p = self.p
        w_max = 1.5 * p.rating_mw * 1e6
        a_max = w_max / (math.sqrt(3) * p.voltage_ll_v)
        sfs = {
            "203.A_SF": scale_factor_for(a_max) - 1,
            "203.V_SF": scale_factor_for(p.voltage_ll_v * 1.2),
            "203.Hz_SF": -2,
            "203.W_SF": scale_factor_for(w_max),
            "203.VA_SF": scale_factor_for(w_max),
            "203.VAR_SF": scale_factor_for(w_max),
            "203.PF_SF": -1,
            "203.TotWh_SF": 3,
            "203.TotVAh_SF": 3,
            "203.TotVArh_SF": 3,
        }
        if a_max / 10 ** sfs["203.A_SF"] > INT16_MAX:
            sfs["203.A_SF"] += 1
        self._update(sfs)
        self._update(
            {
                "1.Mn": "Phoenyra",
                "1.Md": "BESS-SIM-METER",
                "1.Opt": "simulator",
                "1.Vr": "1.0",
                "1.SN": p.serial,
                "1.DA": self.server.unit_id,
                "203.Evt": 0,
            }
        )

    def step(self, dt_s: float) -> float:
        """Advance dt_s seconds: frequency, the power at the POI, the energy registers; returns poi_mw."""
        self.grid.step(dt_s)
        units_mw = sum(src() for src in self.sources)
        self.losses_mw = self.p.loss_fraction * abs(units_mw)
        self.poi_mw = units_mw - self.p.aux_load_mw - self.losses_mw
        hours = max(0.0, dt_s) / 3600.0
        if self.poi_mw > 0:
            self.exported_mwh += self.poi_mw * hours
        else:
            self.imported_mwh += -self.poi_mw * hours
        self.publish()
        return self.poi_mw

    def readings(self) -> dict[str, float]:
        """What the meter measures, by the profiles' canonical names and units (+ export)."""
        p = self.p
        w = self.poi_mw
        amps = abs(w) * 1e6 / (math.sqrt(3) * p.voltage_ll_v)
        return {
            "power_mw": w,
            "reactive_power_mvar": 0.0,
            "apparent_power_mva": abs(w),
            "power_factor": 1.0,
            "power_factor_pct": 100.0,
            "frequency_hz": self.grid.hz,
            "voltage_ll_v": p.voltage_ll_v,
            "voltage_ln_v": p.voltage_ll_v / math.sqrt(3),
            "current_a": amps,
            "energy_exported_mwh": self.exported_mwh,
            "energy_imported_mwh": self.imported_mwh,
        }

    def publish(self) -> None:
        values = self.readings()
        if self._sunspec:
            self._publish_sunspec(values)
            return
        for name, value in values.items():
            if name in self.server.points:
                self.server.set(name, value / self.server.points[name].factor)

    def _publish_sunspec(self, v: dict[str, float]) -> None:
        w = self._sign * v["power_mw"] * 1e6  # the meter's own sign (+ import with sign -1)
        amps, vln, vll = v["current_a"], v["voltage_ln_v"], v["voltage_ll_v"]
        self._update(
            {
                "203.W": w,
                "203.WphA": w / 3,
                "203.WphB": w / 3,
                "203.WphC": w / 3,
                "203.VA": abs(w),
                "203.VAphA": abs(w) / 3,
                "203.VAphB": abs(w) / 3,
                "203.VAphC": abs(w) / 3,
                "203.VAR": 0,
                "203.VARphA": 0,
                "203.VARphB": 0,
                "203.VARphC": 0,
                "203.PF": 100.0,
                "203.PFphA": 100.0,
                "203.PFphB": 100.0,
                "203.PFphC": 100.0,
                "203.Hz": v["frequency_hz"],
                "203.A": amps,
                "203.AphA": amps,
                "203.AphB": amps,
                "203.AphC": amps,
                "203.PhV": vln,
                "203.PhVphA": vln,
                "203.PhVphB": vln,
                "203.PhVphC": vln,
                "203.PPV": vll,
                "203.PhVphAB": vll,
                "203.PhVphBC": vll,
                "203.PhVphCA": vll,
                "203.TotWhExp": v["energy_exported_mwh"] * 1e6,
                "203.TotWhImp": v["energy_imported_mwh"] * 1e6,
            }
        )

    def _update(self, values: dict[str, float | int | str]) -> None:
        """Set refs written as model 203's on the model this meter carries, skipping what it does not have."""
        s, prefix = self.server, f"{self._model}."
        s.update(
            {k.replace("203.", prefix, 1): v for k, v in values.items() if k.replace("203.", prefix, 1) in s.points}
        )

    def state(self) -> dict[str, float | bool]:
        return {
            "power_mw": self.poi_mw,
            "frequency_hz": self.grid.hz,
            "base_hz": self.grid.base_hz,
            "aux_load_mw": self.p.aux_load_mw,
            "losses_mw": self.losses_mw,
            "wander": self.grid.wander,
            "ramping": self.grid.ramping,
        }
