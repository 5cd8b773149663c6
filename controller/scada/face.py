"""The SCADA face: the Modbus TCP and OPC UA servers the site SCADA reads and (allow-listed) writes, as
configured, sharing one `WriteLimiter` (controller.scada.controls) between them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.scada.controls import WriteLimiter

if TYPE_CHECKING:
    from controller.cycle.loop import Controller


class ScadaFace:
    """Both SCADA servers, as configured (either can be off), with one write limiter between them."""

    def __init__(self, controller: "Controller", cfg, state_dir):
        self.parts = []
        self.limiter = WriteLimiter.for_controller(controller)
        if cfg.modbus.enabled:
            from controller.scada.modbus import ScadaModbusServer

            self.parts.append(ScadaModbusServer(controller, cfg.modbus, limiter=self.limiter))
        if cfg.opcua.enabled:
            from controller.scada.opcua import ScadaOpcUaServer

            self.parts.append(
                ScadaOpcUaServer(
                    controller, cfg.opcua, state_dir, demo=controller.config.mode == "demo", limiter=self.limiter
                )
            )

    async def start(self) -> None:
        for p in self.parts:
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self.parts):
            await p.stop()
