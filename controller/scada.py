"""The SCADA face: the Modbus TCP and OPC UA servers the site SCADA reads and (allow-listed) writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.core import Controller


class ScadaFace:
    """Both SCADA servers, as configured (either can be off)."""

    def __init__(self, controller: "Controller", cfg, state_dir):
        self.parts = []
        if cfg.modbus.enabled:
            from controller.scada_modbus import ScadaModbusServer

            self.parts.append(ScadaModbusServer(controller, cfg.modbus))
        if cfg.opcua.enabled:
            from controller.scada_opcua import ScadaOpcUaServer

            self.parts.append(ScadaOpcUaServer(controller, cfg.opcua, state_dir, demo=controller.config.mode == "demo"))

    async def start(self) -> None:
        for p in self.parts:
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self.parts):
            await p.stop()
