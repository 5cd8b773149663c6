"""`bess-edge run`: the composition root. It builds the controller and its faces (MQTT uplink, web, SCADA,
metrics), attaches the faces to the cycle's phases (the only module that does), runs them in one asyncio loop
until SIGTERM/SIGINT, then stops them in reverse order, leaving the plant at 0 MW.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path
from typing import Any

from controller.clock import Clock
from controller.config import ConfigError, Secrets, SiteConfig, load_secrets
from controller.cycle.loop import Controller
from controller.cycle.phases import Event, Phase
from controller.logs import setup_logging
from controller.store import Store

log = logging.getLogger("bess.daemon")


class Daemon:
    """All parts of a running controller. Used by `bess-edge run`, the demo and the system tests."""

    def __init__(
        self,
        config: SiteConfig,
        secrets: Secrets,
        state_dir: str | Path,
        clock: Clock | None = None,
        auto_trading: bool = True,
    ):
        """`auto_trading` False (`run --no-auto-trading`) starts the auto-trader switched off whatever the site
        file says (the kill switch can turn it on)."""
        self.config = config
        self.auto_trading = auto_trading
        self.secrets = secrets
        self.state_dir = Path(state_dir)
        self.clock = clock or Clock()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store.in_state_dir(self.state_dir, now=self.clock.now)
        self.controller = Controller(config, self.store, self.clock)
        self.parts: list[Any] = []  # started parts, stopped in reverse order
        self.uplink = None
        self.web = None
        self.metrics = None
        self.desk = None
        self.auto = None

    @property
    def web_url(self) -> str:
        web = self.config.web
        host = f"[{web.host}]" if ":" in web.host else web.host
        return f"{'https' if web.tls.enabled else 'http'}://{host}:{web.port}"

    async def start(self) -> None:
        cfg = self.config
        # first, before any part runs: a bad configured certificate stops the start with its YAML path
        cert, key = self._web_certificate()
        await self._start_metrics_and_uplink()
        self.controller.hold_ready()  # READY once every face is up and a cycle has completed
        # the cycle starts last, when the faces' start (imports, servers: seconds of CPU on the event loop) is
        # over: run beside it, the first cycles' reads and writes missed their deadlines on a busy loop, as comm
        # alarms and warnings of devices that were there. Stopped after the faces, as before (parts' order).
        at = len(self.parts)
        await self._start_trading()
        if cfg.web.enabled:
            await self._start_web(cert, key)
        if cfg.scada.modbus.enabled or cfg.scada.opcua.enabled or cfg.scada.iec104.enabled:
            await self._start_scada()
        await self.controller.start()
        self.parts.insert(at, self.controller)
        self.controller.allow_ready()
        log.info("controller running", extra={"site": cfg.site.id, "web": self.web_url if cfg.web.enabled else None})

    async def _start_scada(self) -> None:
        """The SCADA servers, given the controller's commands and its latest frozen state, never the Controller."""
        from controller.scada.controls import ScadaPlant
        from controller.scada.face import ScadaFace

        plant = ScadaPlant(self.controller, self.controller.faces.latest, self.config, self.store, self.clock.now)
        self.scada = ScadaFace(plant, self.config.scada, self.state_dir)
        await self.scada.start()
        self.parts.append(self.scada)
        if self.scada.iec104 is not None:  # the grid operator's face: spontaneous values after each cycle
            self.controller.faces.attach(Phase.AFTER_WRITE, self.scada.iec104.on_cycle)

    def _web_certificate(self) -> tuple[str | None, str | None]:
        """The web face's (cert, key) files when it serves TLS, else (None, None)."""
        web = self.config.web
        if web.enabled and web.tls.enabled:
            from controller.tls import ensure_certificate

            return ensure_certificate(web.tls, self.state_dir, bind_host=web.host)
        if web.enabled and (web.tls.cert_file or web.tls.key_file):
            log.warning(
                "web.tls has certificate files but web.tls.enabled is false: serving plain http",
                extra={"cert": web.tls.cert_file},
            )
        return None, None

    async def _start_metrics_and_uplink(self) -> None:
        """Metrics always; the MQTT uplink when enabled. Both are AFTER_WRITE faces, attached in this order."""
        from controller.metrics import Metrics

        cfg = self.config
        faces = self.controller.faces
        self.metrics = Metrics()
        faces.attach(Event.TRADE_ACCEPTED, self.metrics.on_trade)
        if cfg.mqtt.enabled:
            from controller.uplink.mqtt import Uplink
            from controller.uplink.outbox import Outbox

            outbox = Outbox(self.store.path, cfg.mqtt.outbox_max_rows, cfg.mqtt.outbox_max_age_s)
            self.uplink = Uplink(
                cfg,
                self.secrets,
                outbox,
                self.controller.accept_trade,
                self.clock,
                on_ack_confirmed=self.controller.confirm_trade_ack,
            )
            faces.attach(Phase.AFTER_WRITE, self.uplink.on_telemetry)
        # after the telemetry, so that the outbox depth counts this cycle's message
        faces.attach(Phase.AFTER_WRITE, self.metrics.on_cycle)
        if self.uplink is not None:
            # the outbox drain goes quiet around each control cycle (the cycle keeps its rhythm while a backlog
            # drains): set after each cycle, before the next one is due
            faces.attach(Phase.AFTER_WRITE, self.uplink.on_cycle)
            self.metrics.uplink = self.uplink
            await self.uplink.start()
            self.parts.append(self.uplink)

    async def _start_trading(self) -> None:
        """The order desk (reconciles order intents), the forecaster (market history, the forecast's source) and
        the auto-trader (its loop only when the site file enables it; re-plans after every accepted trade)."""
        from controller.trading.auto import AutoTrader, TradingPlant
        from controller.trading.forecast import Forecaster
        from controller.trading.orders import OrderDesk

        self.desk = OrderDesk(self.controller, self.store, self.config, self.clock.now, self.secrets)
        await self.desk.start()
        self.parts.append(_Closing(self.desk))
        forecaster = Forecaster(self.config.forecast, self.store, self.desk, self.clock.now)
        c = self.controller
        plant = TradingPlant(
            self.config, self.store, self.clock, c.faces.latest, c.schedule.periods, c.alarms.raise_, c.alarms.clear
        )
        self.auto = AutoTrader(plant, self.desk, forecaster, self.metrics, switch_on=self.auto_trading)
        if self.config.web.enabled or self.config.trading.auto.enabled:
            await forecaster.start()
            self.parts.append(forecaster)
        if self.config.trading.auto.enabled:
            self.controller.faces.attach(Event.TRADE_ACCEPTED, self.auto.on_trade)
            await self.auto.start()
            self.parts.append(self.auto)

    async def _start_web(self, cert: str | None, key: str | None) -> None:
        """The web's live backend (attached to the cycle) and the HTTP server in front of it."""
        from controller.web_backend import ControllerBackend
        from web.app import create_app
        from web.server import UvicornServer, uvicorn_options
        from web.session_key import load_session_key

        cfg = self.config
        faces = self.controller.faces
        # the order desk (built in _start_trading) gets the controller's pre-trade check as a command, never the
        # Controller; the daemon starts and closes it
        self.backend = ControllerBackend(self.controller, self.desk, self.metrics, auto=self.auto, owns_desk=False)
        self.backend.telemetry_sink = self.uplink.publish_telemetry if self.uplink is not None else None
        faces.attach(Phase.READ, self.backend.cycle_started)  # the web's cycle gate
        faces.attach(Phase.IDLE, self.backend.cycle_over)
        faces.attach(Phase.AFTER_WRITE, self.backend.publish)  # websocket subscribers
        await self.backend.start()
        self.parts.append(self.backend)
        # sessions are signed with the state directory's own random key, never with HMAC_SECRET
        app = create_app(
            self.backend,
            self.secrets.api_keys,
            load_session_key(self.state_dir),
            read_keys=self.secrets.api_keys_read,
            max_body_bytes=cfg.web.max_body_bytes,
            open_metrics=cfg.web.open_metrics,
            open_docs=cfg.web.open_docs,
            lockout_failures=cfg.web.lockout_failures,
            lockout_s=cfg.web.lockout_s,
            metrics_registry=self.metrics.registry,
        )
        # TLS (cert, key) is done inside the web's connection guard: see web/server.py
        try:
            options = uvicorn_options(cfg.web, cert, key)
        except ValueError as e:  # the connection cap does not fit in the descriptor limit
            raise ConfigError("web", [str(e)]) from None
        self.web = UvicornServer(
            app,
            cfg.web.host,
            cfg.web.port,
            name="web",
            lifespan="on",
            ws_ping_interval=20,
            **options,
        )
        await self.web.start()
        self.parts.append(self.web)

    async def stop(self) -> None:
        for part in reversed(self.parts):
            try:
                await part.stop()
            except Exception:
                log.exception("stopping a part failed", extra={"part": type(part).__name__})
        self.parts.clear()
        self.store.close()


class _Closing:
    """A part whose stop is its `close()` (the order desk)."""

    def __init__(self, part: Any):
        self.part = part

    async def stop(self) -> None:
        await self.part.close()


async def run_until_signalled(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        # what is alive now (config, profiles, drivers, the store, the faces) lives as long as the daemon: kept out
        # of the collector's full passes, which then scan only what the cycles make (a 64-unit plant's full pass
        # took 68 ms in the middle of a cycle, 14 ms so)
        gc.freeze()
        await stop.wait()
        log.info("stopping on signal")
    finally:
        await daemon.stop()


def main_run(config: SiteConfig, args) -> int:
    setup_logging(getattr(args, "log_format", "json"))
    try:
        secrets = load_secrets(config)
    except ConfigError as e:
        log.error("refusing to start: bad secrets", extra={"errors": e.errors})
        for line in e.errors:
            print(f"environment: {line}", flush=True)
        return 2
    for line in config.warnings + secrets.warnings:  # risks the site file accepts on purpose: said on every start
        log.warning("accepted risk", extra={"risk": line})
    time_scale = getattr(args, "time_scale", None)
    # a sped-up clock is for labs and tests against simulators run at the same --time-scale, never a site
    clock = Clock(speed=time_scale) if time_scale and time_scale != 1.0 else None
    if clock is not None:
        if config.mode != "demo":
            print(f"--time-scale {time_scale:g}: only for a site file with mode: demo (this one is {config.mode})")
            return 2
        log.warning("clock sped up for a lab run", extra={"time_scale": time_scale})
    daemon = Daemon(config, secrets, args.state_dir, clock=clock, auto_trading=getattr(args, "auto_trading", True))
    try:
        asyncio.run(run_until_signalled(daemon))
    except ConfigError as e:  # found at start, e.g. web.tls files that cannot be served
        log.error("refusing to start: bad configuration", extra={"errors": e.errors})
        for line in e.errors:
            print(f"config: {line}", flush=True)
        return 2
    except OSError as e:
        log.error("cannot start", extra={"error": str(e)})
        return 1
    return 0
