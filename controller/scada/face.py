"""The SCADA face: the Modbus TCP and OPC UA servers the site SCADA reads and (allow-listed) writes, and the
IEC 60870-5-104 server of the grid operator, as configured, sharing one `WriteLimiter`
(controller.scada.controls) between them."""

from __future__ import annotations

from pathlib import Path

from controller.config import Scada
from controller.scada.controls import ScadaPlant, WriteLimiter


class ScadaFace:
    """The SCADA servers, as configured (each can be off), with one write limiter between them. `iec104` is the
    IEC 104 face (None when off): the composition root attaches its `on_cycle` to the cycle."""

    def __init__(self, plant: ScadaPlant, cfg: Scada, state_dir: str | Path):
        self.parts = []
        self.iec104 = None
        self.limiter = WriteLimiter.for_scada(cfg)
        if cfg.modbus.enabled:
            from controller.scada.modbus import ScadaModbusServer

            self.parts.append(ScadaModbusServer(plant, cfg.modbus, limiter=self.limiter))
        if cfg.opcua.enabled:
            from controller.scada.opcua import ScadaOpcUaServer

            self.parts.append(
                ScadaOpcUaServer(plant, cfg.opcua, state_dir, demo=plant.site.mode == "demo", limiter=self.limiter)
            )

        if cfg.iec104.enabled:
            from controller.scada.iec104 import Iec104Face

            self.iec104 = Iec104Face(plant, cfg.iec104, state_dir, limiter=self.limiter)
            self.parts.append(self.iec104)

    async def start(self) -> None:
        for p in self.parts:
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self.parts):
            await p.stop()
