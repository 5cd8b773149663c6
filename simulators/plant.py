"""The plant simulator: one battery model behind a BMS Modbus face, a PCS SunSpec face and a BMS OPC UA face,
stepped by an injected (possibly sped-up) clock in one asyncio loop. `bess-edge simulate` runs it for a one-unit
site file (simulators/site.py: main_simulate)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.clock import Clock
from controller.config import SiteConfig
from drivers.profile import Profile, load_profile
from simulators.battery import BatteryModel, BatteryParams
from simulators.faults import Faults
from simulators.modbus_server import ModbusSimServer
from simulators.parts import SimulatorParts
from simulators.pcs import Pcs, PcsParams

if TYPE_CHECKING:
    from web.server import UvicornServer

log = logging.getLogger("bess.sim.plant")

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
FACES = ("bms_modbus", "pcs", "bms_opcua")


def plant_params(
    config: SiteConfig, capacity_mwh: float, rated_mw: float, reversion_timeout_s: float, **pcs: Any
) -> tuple[BatteryParams, PcsParams]:
    """A battery and PCS of this size, of the site file's battery (efficiencies, self-discharge) and the
    simulator's thermal model and ramp; `pcs`: more PcsParams (e.g. a unit's serial)."""
    sim, bat = config.simulator, config.battery
    battery = BatteryParams(
        capacity_mwh=capacity_mwh,
        rated_power_mw=rated_mw,
        charge_efficiency=bat.charge_efficiency,
        discharge_efficiency=bat.discharge_efficiency,
        self_discharge_pct_per_day=bat.self_discharge_pct_per_day,
        ambient_c=sim.ambient_c,
        thermal_time_constant_s=sim.thermal_time_constant_s,
        heating_c_per_mw=sim.heating_c_per_mw,
    )
    return battery, PcsParams(
        rated_power_mw=rated_mw, ramp_mw_per_s=sim.ramp_mw_per_s, reversion_timeout_s=reversion_timeout_s, **pcs
    )


class Plant(SimulatorParts):
    """Battery + PCS + faces. Ports: None = face off, 0 = any free port (read `ports` after start)."""

    def __init__(
        self,
        battery: BatteryParams,
        pcs: PcsParams,
        *,
        clock: Clock | None = None,
        initial_soc_pct: float = 50.0,
        initial_temperature_c: float | None = None,
        host: str = "127.0.0.1",
        bms_modbus_port: int | None = 0,
        pcs_modbus_port: int | None = 0,
        bms_opcua_port: int | None = None,
        control_port: int | None = None,
        unit_id: int = 1,
        bms_profile: Profile | None = None,
        pcs_profile: Profile | None = None,
        tick_s: float = 0.05,
        bms_unit_id: int | None = None,
        pcs_unit_id: int | None = None,
        name: str = "",
    ):
        super().__init__()
        self.clock = clock or Clock()
        self.host = host
        self.tick_s = tick_s
        self.model = BatteryModel(battery, soc_pct=initial_soc_pct, temperature_c=initial_temperature_c)
        self.faults: dict[str, Faults] = {face: Faults() for face in FACES}
        self.bms_profile = bms_profile or load_profile(PROFILES / "generic-bms.yaml")
        self.pcs_profile = pcs_profile or load_profile(PROFILES / "sunspec-pcs.yaml")
        lead = f"{name}." if name else ""  # a unit of a multi-unit plant: its faces are named u2.bms ...
        self.bms = ModbusSimServer.from_profile(
            self.bms_profile,
            unit_id=bms_unit_id or unit_id,
            host=host,
            port=bms_modbus_port or 0,
            faults=self.faults["bms_modbus"],
            name=f"{lead}bms",
        )
        self.pcs_server = ModbusSimServer.from_profile(
            self.pcs_profile,
            unit_id=pcs_unit_id or unit_id,
            host=host,
            port=pcs_modbus_port or 0,
            faults=self.faults["pcs"],
            name=f"{lead}pcs",
        )
        self.pcs = Pcs(self.model, self.pcs_server, pcs, self.clock)
        self._ports_wanted = {
            "bms_modbus": bms_modbus_port,
            "pcs": pcs_modbus_port,
            "bms_opcua": bms_opcua_port,
            "control": control_port,
        }
        self.opcua: Any = None
        self._control: Any = None
        self.ticks = 0
        self._bms_init()
        self.publish_bms()
        self._bms_unpublished = False  # a physics step ran since the BMS registers were last laid
        self.bms.refresh = self._refresh_bms

    @classmethod
    def from_config(cls, config: SiteConfig, **overrides: Any) -> "Plant":
        """From the site file's `simulator:` and `battery:` sections (and the PCS device's reversion time).
        Overrides: any constructor keyword, e.g. ports (tests pass 0 for free ports) or clock."""
        sim = config.simulator
        _, pcs_dev = config.device("pcs")
        battery, pcs = plant_params(
            config, config.battery.capacity_mwh, sim.rated_power_mw, pcs_dev.reversion_timeout_s
        )
        kwargs: dict[str, Any] = dict(
            clock=Clock(speed=sim.time_scale),
            initial_soc_pct=sim.initial_soc_pct,
            initial_temperature_c=sim.initial_temperature_c,
            host=sim.host,
            bms_modbus_port=sim.bms_modbus_port,
            pcs_modbus_port=sim.pcs_modbus_port,
            bms_opcua_port=sim.bms_opcua_port,
            control_port=sim.control_port,
        )
        # the profiles the site's devices use, so that simulator and driver agree on the map
        for dev in config.devices.values():
            prof = config.load_profile(dev)
            if dev.role == "pcs" and prof.protocol == "sunspec":
                kwargs["pcs_profile"] = prof
                kwargs["unit_id"] = dev.unit_id
            elif dev.role == "bms" and prof.protocol == "modbus":
                kwargs["bms_profile"] = prof
        kwargs.update(overrides)
        return cls(battery, pcs, **kwargs)

    # --- the BMS Modbus face ------------------------------------------------------------------------------

    def _bms_init(self) -> None:
        points = self.bms_profile.points
        if "cell_v_sf" in points:
            self.bms.set("cell_v_sf", -3)
        if "serial" in points:
            self.bms.set("serial", "SIM-BMS-0001")

    def publish_bms(self) -> None:
        """The model's readings into the BMS registers, converted from canonical units to the device's."""
        values = self.model.readings()
        for name, value in values.items():
            if name not in self.bms_profile.points:
                continue
            p = self.bms_profile.points[name]
            if name in ("alarm_bits", "fault_bits"):
                value = int(value) & 0xFFFF
            else:
                value = value / p.factor
            self.bms.set(name, value)
        if "contactor_closed" in self.bms_profile.points:
            self.bms.set("contactor_closed", 0 if self.model.fault_bits else 1)

    def _refresh_bms(self) -> None:
        if self._bms_unpublished:
            self._bms_unpublished = False
            self.publish_bms()

    def check_fault(self, face: str, raw: dict[str, Any], status_codes: dict[str, Any]) -> None:
        """Can `face` serve these raw values and status codes? ValueError naming the point if not."""
        if face in ("bms_modbus", "pcs"):
            if status_codes:
                raise ValueError("status_codes: a Modbus face has none (only bms_opcua serves status codes)")
            server = self.bms if face == "bms_modbus" else self.pcs_server
            for name, value in raw.items():
                server.raw_registers(name, value)
            return
        if self.opcua is None:
            raise ValueError(f"{face}: the OPC UA face is not running")
        self.opcua.check_fault(raw, status_codes)

    def _merge_injected_bits(self) -> None:
        # alarm and fault bits are a plant condition: raised on any face, every face shows them
        alarm = fault = 0
        for f in self.faults.values():
            alarm |= f.alarm_bits
            fault |= f.fault_bits
        self.model.injected_alarm_bits = alarm
        self.model.injected_fault_bits = fault

    # --- running ------------------------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """One physics step of dt_s clock seconds (the tick task calls this; tests may too)."""
        self._merge_injected_bits()
        self.pcs.step(dt_s)
        self._bms_unpublished = True  # laid when a client next asks (_refresh_bms), not on every tick
        self.ticks += 1

    async def _run(self) -> None:
        last = self.clock.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock.monotonic()
            try:
                self.step(now - last)
            except Exception:  # noqa: BLE001 - one bad step is logged; the plant keeps serving
                log.exception("plant step failed")
            last = now

    @property
    def ports(self) -> dict[str, int]:
        """The ports served, by face (after start)."""
        out = {}
        if self._ports_wanted["bms_modbus"] is not None:
            out["bms_modbus"] = self.bms.port
        if self._ports_wanted["pcs"] is not None:
            out["pcs"] = self.pcs_server.port
        if self.opcua is not None:
            out["bms_opcua"] = getattr(self.opcua, "port", None) or self._ports_wanted["bms_opcua"]
        if self._control is not None:
            out["control"] = self._control.port
        return out

    async def start(self) -> None:
        try:
            if self._ports_wanted["bms_modbus"] is not None:
                await self.bms.start()
                self._started.append(self.bms)
            if self._ports_wanted["pcs"] is not None:
                await self.pcs_server.start()
                self._started.append(self.pcs_server)
            if self._ports_wanted["bms_opcua"] is not None:
                # imported here: asyncua is heavy and only this face needs it
                from simulators.opcua_bms import OpcUaBmsServer

                self.opcua = OpcUaBmsServer(
                    self.model, self.host, self._ports_wanted["bms_opcua"], self.clock, self.faults["bms_opcua"]
                )
                await self.opcua.start()
                self._started.append(self.opcua)
            if self._ports_wanted["control"] is not None:
                self._control = _control_server(self, self.host, self._ports_wanted["control"])
                await self._control.start()
                self._started.append(self._control)
            self._tick = asyncio.create_task(self._run(), name="plant-tick")
        except BaseException:
            await self.stop()
            raise


def _control_server(plant: Plant, host: str, port: int) -> "UvicornServer":
    """The loopback HTTP control app (simulators/control.py) under uvicorn, without uvicorn's signal capture
    (main_simulate owns SIGINT/SIGTERM)."""
    from simulators.control import create_control_app
    from web.server import UvicornServer  # here: uvicorn is heavy and only this face needs it

    app = create_control_app(plant.model, plant.faults, plant.check_fault)
    return UvicornServer(app, host, port, name="simulator control", lifespan="off")
