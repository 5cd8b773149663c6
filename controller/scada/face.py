"""The SCADA face: the Modbus TCP and OPC UA servers the site SCADA reads and (allow-listed) writes, as
configured, sharing one `WriteLimiter` (controller.scada.controls) between them."""

from __future__ import annotations

from pathlib import Path

from controller.config import Scada
from controller.scada.controls import ScadaPlant, WriteLimiter


class ScadaFace:
    """Both SCADA servers, as configured (either can be off), with one write limiter between them."""

    def __init__(self, plant: ScadaPlant, cfg: Scada, state_dir: str | Path):
        self.parts = []
        self.limiter = WriteLimiter.for_scada(cfg)
        if cfg.modbus.enabled:
            from controller.scada.modbus import ScadaModbusServer

            self.parts.append(ScadaModbusServer(plant, cfg.modbus, limiter=self.limiter))
        if cfg.opcua.enabled:
            from controller.scada.opcua import ScadaOpcUaServer

            self.parts.append(
                ScadaOpcUaServer(plant, cfg.opcua, state_dir, demo=plant.site.mode == "demo", limiter=self.limiter)
            )

    async def start(self) -> None:
        for p in self.parts:
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self.parts):
            await p.stop()
