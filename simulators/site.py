"""The whole site's simulator for a plant of several units and/or a POI meter: every unit is a Plant (its own
battery model, PCS, BMS faces; ratings, capacity, SoC and temperature may differ) on the ports its devices name in
the site file, devices that share a host:port served as unit ids behind one gateway port, the POI meter
(simulators/meter.py) measuring the units' sum, and one control app. `bess-edge simulate` (main_simulate, here)
runs it for such a file; a one-unit file without a meter keeps simulators.plant.Plant, unchanged.

Face names (control API `POST /sim/faults/{face}`): `u2.bms_modbus`, `u2.pcs`, `u1.bms_opcua`, ... and `meter`;
a one-unit file with a meter keeps `bms_modbus`, `pcs`, `bms_opcua` and adds `meter`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from controller.clock import Clock
from controller.config import SiteConfig, UnitPlan
from simulators.faults import Faults
from simulators.meter import GridFrequency, Meter, MeterParams
from simulators.modbus_server import ModbusSimServer
from simulators.parts import SimulatorParts
from simulators.plant import Plant, plant_params

if TYPE_CHECKING:
    from web.server import UvicornServer

log = logging.getLogger("bess.sim.site")


# a Modbus face to serve: (host, port) where the site file expects it, and the device's server
Face = tuple[tuple[str, int], ModbusSimServer]


def _unit_plant(config: SiteConfig, u: UnitPlan, clock: Clock, host: str, tick_s: float) -> tuple[Plant, list[Face]]:
    """A unit's Plant, and its Modbus faces for the caller to serve (on their own ports or behind a gateway)."""
    sim = config.simulator
    extra = sim.units.get(u.unit)
    battery, pcs = plant_params(
        config, u.capacity_mwh, u.rated_mw, u.pcs.reversion_timeout_s, serial=f"SIM-PCS-{u.unit}"
    )
    bms_modbus = u.bms.protocol == "modbus"
    bms_profile = config.load_profile(u.bms) if bms_modbus else None
    soc = extra.initial_soc_pct if extra and extra.initial_soc_pct is not None else sim.initial_soc_pct
    temp = (
        extra.initial_temperature_c if extra and extra.initial_temperature_c is not None else sim.initial_temperature_c
    )
    plant = Plant(
        battery,
        pcs,
        clock=clock,
        initial_soc_pct=soc,
        initial_temperature_c=temp,
        host=host,
        bms_modbus_port=None,
        pcs_modbus_port=None,  # the caller serves the Modbus faces
        bms_opcua_port=u.bms.port if u.bms.protocol == "opcua" else (extra.bms_opcua_port if extra else None),
        control_port=None,
        bms_profile=bms_profile,
        pcs_profile=config.load_profile(u.pcs),
        bms_unit_id=u.bms.unit_id if bms_modbus else 1,
        pcs_unit_id=u.pcs.unit_id,
        tick_s=tick_s,
        name=u.unit,
    )
    faces: list[Face] = [((u.pcs.host, u.pcs.port), plant.pcs_server)]
    if bms_modbus:
        faces.append(((u.bms.host, u.bms.port), plant.bms))
    elif extra and extra.bms_modbus_port:  # an extra face of its own (the one-unit demo's 1502)
        faces.append(((host, extra.bms_modbus_port), plant.bms))
    return plant, faces


class SitePlant(SimulatorParts):
    """Units + meter + gateways + control. Ports: read `ports` after start (tests pass port 0 in the config)."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        clock: Clock | None = None,
        tick_s: float = 0.05,
        control_port: int | None = None,
        host: str | None = None,
    ):
        super().__init__()
        self.config = config
        self.clock = clock or Clock(speed=config.simulator.time_scale)
        self.host = host or config.simulator.host
        self.tick_s = tick_s
        self.control_port = control_port
        self.multi = bool(config.units)
        self.units: dict[str, Plant] = {}
        self.faults: dict[str, Faults] = {}
        modbus_faces: list[Face] = []
        if self.multi:
            for u in config.unit_plan():
                plant, faces = _unit_plant(config, u, self.clock, self.host, tick_s)
                self.units[u.unit] = plant
                modbus_faces += faces
                self.faults.update({f"{u.unit}.{face}": f for face, f in plant.faults.items()})
        else:  # one unit: today's ports and face names, from simulator:
            plant = Plant.from_config(config, clock=self.clock, control_port=None, tick_s=tick_s)
            self.units[""] = plant
            self.faults.update(plant.faults)
        self.meter, self.meter_server = self._meter(modbus_faces)
        self._listeners = self._gateways(modbus_faces)
        self._control: Any = None

    def _meter(self, faces: list) -> tuple[Meter | None, ModbusSimServer | None]:
        found = self.config.meter()
        if found is None:
            return None, None
        name, dev = found
        if dev.protocol == "opcua":
            raise ValueError(f"devices.{name}: the meter simulator serves Modbus (SunSpec or a register map)")
        self.faults["meter"] = Faults()
        server = ModbusSimServer.from_profile(
            self.config.load_profile(dev),
            unit_id=dev.unit_id,
            host=self.host,
            port=dev.port,
            faults=self.faults["meter"],
            name="meter",
        )
        plan = self.config.unit_plan()
        params = MeterParams(aux_load_mw=self.config.battery.aux_load_mw, rating_mw=sum(u.rated_mw for u in plan))
        meter = Meter(server, [lambda m=p.model: m.power_mw for p in self.units.values()], params, GridFrequency())
        faces.append(((dev.host, dev.port), server))
        return meter, server

    def _gateways(self, faces: list[Face]) -> list[ModbusSimServer]:
        """The servers that listen: one per host:port of the site file; the others are served behind it."""
        by_port: dict[tuple[str, int], ModbusSimServer] = {}
        for where, server in faces:
            first = by_port.get(where)
            if first is None:
                server.port = where[1]
                by_port[where] = server
            else:
                first.serve_also(server)
        self._served = {id(server) for _, server in faces}
        return list(by_port.values())

    # --- running ------------------------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """One physics step of every unit and the meter (the tick tasks do this; tests may too)."""
        for plant in self.units.values():
            plant.step(dt_s)
        if self.meter is not None:
            self.meter.step(dt_s)

    def check_fault(self, face: str, raw: dict[str, Any], status_codes: dict[str, Any]) -> None:
        if face == "meter":
            if status_codes:
                raise ValueError("status_codes: a Modbus face has none")
            for name, value in raw.items():
                self.meter_server.raw_registers(name, value)  # type: ignore[union-attr]
            return
        unit, _, unit_face = face.rpartition(".")
        self.units[unit].check_fault(unit_face, raw, status_codes)

    @property
    def ports(self) -> dict[str, int]:
        """Ports served, by face name (after start); faces behind one gateway show the same port."""
        out: dict[str, int] = {}
        for unit, plant in self.units.items():
            lead = f"{unit}." if unit else ""
            out.update({f"{lead}{face}": port for face, port in plant.ports.items() if face != "control"})
            if self.multi:
                out[f"{lead}pcs"] = plant.pcs_server.port
                if id(plant.bms) in self._served:
                    out[f"{lead}bms_modbus"] = plant.bms.port
        if self.meter_server is not None:
            out["meter"] = self.meter_server.port
        if self._control is not None:
            out["control"] = self._control.port
        return out

    async def start(self) -> None:
        try:
            for server in self._listeners:
                await server.start()
                self._started.append(server)
            for plant in self.units.values():
                await plant.start()
                self._started.append(plant)
            if self.control_port is not None:
                self._control = _control_server(self, self.host, self.control_port)
                await self._control.start()
                self._started.append(self._control)
            if self.meter is not None:
                self._tick = asyncio.create_task(self._run_meter(), name="meter-tick")
        except BaseException:
            await self.stop()
            raise

    async def _run_meter(self) -> None:
        last = self.clock.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock.monotonic()
            try:
                self.meter.step(now - last)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - one bad step is logged; the meter keeps serving
                log.exception("meter step failed")
            last = now


def _control_server(site: SitePlant, host: str, port: int) -> "UvicornServer":
    from simulators.control import create_control_app
    from web.server import UvicornServer  # here: uvicorn is heavy and only this face needs it

    models = {u or "u1": p.model for u, p in site.units.items()}
    app = create_control_app(
        models if site.multi else next(iter(models.values())), site.faults, site.check_fault, meter=site.meter
    )
    return UvicornServer(app, host, port, name="simulator control", lifespan="off")


def needs_site_plant(config: SiteConfig) -> bool:
    """Several units or a POI meter: more than simulators.plant.Plant serves."""
    return bool(config.units) or config.meter() is not None


async def main_simulate(config: SiteConfig) -> None:
    """`bess-edge simulate`: serve the plant on the config's ports until SIGINT/SIGTERM or cancellation. A plant
    of several units or with a POI meter is a SitePlant; a one-unit file without one, simulators.plant.Plant."""
    from web.server import stop_signals

    sim = config.simulator
    site = needs_site_plant(config)
    plant: Any = SitePlant(config, control_port=sim.control_port) if site else Plant.from_config(config)
    async with stop_signals() as stop, plant:
        if site:
            for u in config.unit_plan():
                print(f"plant simulator: unit {u.unit} {u.capacity_mwh:g} MWh / {u.rated_mw:g} MW", flush=True)
        else:
            print(
                f"plant simulator: {config.battery.capacity_mwh:g} MWh / {sim.rated_power_mw:g} MW, "
                f"SoC {sim.initial_soc_pct:g} %, time x{sim.time_scale:g}",
                flush=True,
            )
        names = {
            "bms_modbus": "BMS Modbus TCP",
            "pcs": "PCS Modbus TCP (SunSpec)",
            "bms_opcua": "BMS OPC UA",
            "control": "control HTTP",
            "meter": "POI meter Modbus TCP",
        }
        for face, port in plant.ports.items():
            unit, _, kind = face.rpartition(".")
            label = f"{unit} {names[kind]}" if unit else names[kind]
            print(f"  {label:<29} {sim.host}:{port}", flush=True)
        await stop.wait()
        print("plant simulator: stopping", flush=True)
