"""`bess-edge demo`: everything on one machine, on DESIGN.md's fixed demo ports, as child processes:
MQTT broker, plant simulators, exchange simulator, controller (with dashboard and SCADA face).
Shows progress while starting, prints the URLs, and stops everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from controller.config import DEMO_API_KEY, DEMO_HMAC_SECRET, ConfigError, SiteConfig, load_config

HOST = "127.0.0.1"
MQTT_PORT = 1883
EXCHANGE_PORT = 9000


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def mosquitto_binary() -> str | None:
    for p in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if p and os.access(p, os.X_OK):
            return p
    return None


def mosquitto_user_line() -> str:
    """The `user` line for a mosquitto we start. Started by root, mosquitto drops to the user `mosquitto`, which
    cannot enter our private (0700) state directories: every persistence save and the log file failed with
    'Permission denied'. It runs as whoever started us instead, like every other process of the demo (for a
    user other than root the setting changes nothing; as root, mosquitto warns that it runs as root)."""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


def write_mosquitto_conf(directory: Path, port: int) -> Path:
    """The demo's broker: loopback only, nothing dropped (max_queued_messages 0), persistent in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n" + mosquitto_user_line() + "allow_anonymous true\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 0\n"
        "persistence true\n"
        f"persistence_location {directory}/\n"
        "autosave_interval 5\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    )
    return conf


def simulator_ports(cfg: SiteConfig) -> list[int]:
    """The ports `bess-edge simulate` opens for this site file, so the demo can wait for them: a plant of several
    units or with a POI meter serves every device on its own host:port (devices behind one gateway share it) and
    each unit's extra faces; a one-unit file its simulator: ports. The control API's port too."""
    sim = cfg.simulator
    if cfg.units:
        ports = [d.port for d in cfg.devices.values()]
        ports += [p for u in sim.units.values() for p in (u.bms_modbus_port, u.bms_opcua_port)]
    else:
        meter = cfg.meter()
        ports = [sim.bms_modbus_port, sim.pcs_modbus_port, sim.bms_opcua_port, meter[1].port if meter else None]
    return sorted({p for p in (*ports, sim.control_port) if p})


def plant_lines(cfg: SiteConfig) -> list[str]:
    """What the demo prints about the plant simulators: each unit's BMS and PCS faces, the POI meter, the
    simulator's control API."""
    sim = cfg.simulator
    if cfg.units:
        out = []
        for u in cfg.unit_plan():
            bms = [_face(u.bms.protocol, u.bms.port) + " (the controller reads this one)"]
            extra = sim.units.get(u.unit)
            if extra and extra.bms_modbus_port:
                bms.append(_face("modbus", extra.bms_modbus_port))
            if extra and extra.bms_opcua_port:
                bms.append(_face("opcua", extra.bms_opcua_port))
            out += [
                f"unit {u.unit:<9} {u.rated_mw:g} MW / {u.capacity_mwh:g} MWh",
                f"  BMS          {', '.join(bms)}",
                f"  PCS          {_face(u.pcs.protocol, u.pcs.port)}",
            ]
    else:
        out = [
            f"BMS simulator  {_face('modbus', sim.bms_modbus_port)}, {_face('opcua', sim.bms_opcua_port)}",
            f"PCS simulator  {_face('sunspec', sim.pcs_modbus_port)}",
        ]
    meter = cfg.meter()
    if meter is not None:
        out.append(f"POI meter      {_face(meter[1].protocol, meter[1].port)}")
    if sim.control_port:
        out.append(f"simulator API  http://{HOST}:{sim.control_port}/sim/state")
    return out


def iec104_line(cfg) -> str:
    """The demo's line about the grid operator's IEC 104 face (nothing when the site file has it off)."""
    face = cfg.scada.iec104
    if not face.enabled:
        return ""
    return f"  grid operator  IEC 60870-5-104 {HOST}:{face.port} (common address {face.common_address})\n"


def _face(protocol: str, port: int | None) -> str:
    where = f"opc.tcp://{HOST}:{port}" if protocol == "opcua" else f"{HOST}:{port}"
    return {"opcua": "OPC UA", "modbus": "Modbus TCP", "sunspec": "Modbus TCP (SunSpec)"}[protocol] + " " + where


@dataclass
class Child:
    name: str
    argv: list[str]
    ports: list[int]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


class Demo:
    def __init__(
        self, config_path: str, state_dir: Path, counterparties: int, quiet: bool = False, auto_trading: bool = True
    ):
        self.config_path = config_path
        self.auto_trading = auto_trading  # False (--no-orders): the controller starts with the auto-trader off
        self.state_dir = state_dir
        self.counterparties = counterparties
        self.children: list[Child] = []
        self.quiet = quiet
        self.env = {
            **os.environ,
            "API_KEY": DEMO_API_KEY,
            "EXCHANGE_API_KEY": DEMO_API_KEY,  # the key the demo site presents to the exchange simulator
            "HMAC_SECRET": DEMO_HMAC_SECRET,
            "MQTT_URL": f"mqtt://{HOST}:{MQTT_PORT}",
            "EXCHANGE_BASE_URL": f"http://{HOST}:{EXCHANGE_PORT}",
            "PYTHONUNBUFFERED": "1",
        }

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def plan(self) -> list[Child]:
        cfg = load_config(self.config_path)
        exe = [sys.executable, "-m", "controller.cli"]
        broker = mosquitto_binary()
        if broker:
            conf = write_mosquitto_conf(self.state_dir / "mosquitto", MQTT_PORT)
            mqtt = Child("MQTT broker (mosquitto)", [broker, "-c", str(conf)], [MQTT_PORT])
        else:
            mqtt = Child(
                "MQTT broker (embedded amqtt)",
                [sys.executable, "-m", "simulators.broker", "--port", str(MQTT_PORT)],
                [MQTT_PORT],
            )
        sim_ports = simulator_ports(cfg)
        scada_ports = [p.port for p in (cfg.scada.modbus, cfg.scada.opcua, cfg.scada.iec104) if p.enabled]
        return [
            mqtt,
            Child("plant simulators", exe + ["simulate", "--config", self.config_path], sim_ports),
            Child(
                "exchange simulator",
                exe + ["exchange", "--port", str(EXCHANGE_PORT), "--counterparties", str(self.counterparties)],
                [EXCHANGE_PORT],
            ),
            Child(
                "controller + dashboard",
                exe
                + [
                    "run",
                    "--config",
                    self.config_path,
                    "--state-dir",
                    str(self.state_dir / "controller"),
                    "--log-format",
                    "json",
                    *([] if self.auto_trading else ["--no-auto-trading"]),
                ],
                [cfg.web.port] + scada_ports,
            ),
        ]

    def start(self) -> None:
        busy = [(c.name, p) for c in self.plan() for p in c.ports if port_open(p)]
        if busy:
            raise RuntimeError(
                "ports already in use: " + ", ".join(f"{p} ({n})" for n, p in busy) + " — is another demo running?"
            )
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for child in self.plan():
            self.say(f"  starting {child.name} ...")
            child.log_path = logs / (child.name.split()[0].lower() + ".log")
            out = open(child.log_path, "ab")
            child.proc = subprocess.Popen(
                child.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            out.close()
            self.children.append(child)
            deadline = time.monotonic() + 45
            while not all(port_open(p) for p in child.ports):
                if child.proc.poll() is not None:
                    raise RuntimeError(
                        f"{child.name} exited with code {child.proc.returncode}; "
                        f"its log: {child.log_path}\n{tail(child.log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{child.name} did not open ports {child.ports} within 45 s; log: {child.log_path}\n{tail(child.log_path)}"
                    )
                time.sleep(0.1)
            self.say(f"  ✓ {child.name} on {', '.join(str(p) for p in child.ports)}")

    def check(self) -> str | None:
        """The name of a child that died, if any."""
        for c in self.children:
            if c.proc and c.proc.poll() is not None:
                return f"{c.name} exited with code {c.proc.returncode}; log: {c.log_path}\n{tail(c.log_path)}"
        return None

    def stop(self, timeout_s: float = 8.0) -> None:
        """SIGTERM every child (controller first), wait, then SIGKILL what is left: no orphans."""
        for c in reversed(self.children):
            if c.proc and c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for c in reversed(self.children):
            if not c.proc:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # said, so that a stop that needed force shows (tests/system/test_demo.py looks for it)
                print(
                    f"demo: {c.name} did not stop within {timeout_s:g} s of SIGTERM: killed",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait(timeout=5)
        self.children.clear()


def report_auto_trading(web: str, say, timeout_s: float = 45.0) -> None:
    """So that the demo shows the site trading on its own: once the controller is ready, wait for the
    auto-trader's first plan and say what it is doing (its orders go through the pre-trade check to the exchange,
    the trades come back signed over MQTT into the schedule, and the plant follows at delivery). Anything that
    goes wrong is said and the demo goes on."""
    import httpx

    headers = {"X-API-Key": DEMO_API_KEY}
    try:
        with httpx.Client(base_url=web, headers=headers, timeout=10, verify=False) as c:  # noqa: S501 (own cert)
            deadline = time.monotonic() + timeout_s
            auto: dict = {}
            while time.monotonic() < deadline:
                if c.get("/readyz").status_code == 200:
                    auto = c.get("/api/auto").json()
                    # past its start-up (the first cycle's SoC, the first prices)
                    if auto.get("replans", 0) >= 1 and auto.get("state") not in ("no_soc", "no_forecast"):
                        break
                time.sleep(0.5)
            if not auto.get("replans"):
                say(f"  auto-trading   no plan yet after {timeout_s:g} s (state {auto.get('state', 'unknown')})")
                return
            plan = c.get("/api/plan").json()
            say(
                f"  auto-trading   {auto['state']}: plan {plan['status']} over {len(plan['periods'])} periods, "
                f"objective {plan['objective_eur'] or 0:.0f} EUR, {auto['orders_placed']} orders placed so far "
                f'(kill switch: the dashboard, or POST /api/auto {{"enabled": false}})'
            )
    except (httpx.HTTPError, ValueError, KeyError) as e:
        say(f"  auto-trading   status not read ({e})")


def tail(path: Path | None, lines: int = 15) -> str:
    if not path or not path.exists():
        return ""
    return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])


def main_demo(args) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    tmp = None
    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bess-edge-demo-")
        state_dir = Path(tmp.name)
    demo = Demo(args.config, state_dir, args.counterparties, auto_trading=args.orders)
    stop_requested = False

    def on_signal(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"bess-edge demo — site '{cfg.site.id}', state in {state_dir}", flush=True)
    code = 0
    try:
        demo.start()
        plant = "\n".join("  " + line for line in plant_lines(cfg))
        web = f"{'https' if cfg.web.tls.enabled else 'http'}://127.0.0.1:{cfg.web.port}"
        print(
            f"""
Demo running. Everything listens on 127.0.0.1:
  dashboard      {web}/          API key: {DEMO_API_KEY}
  REST API       {web}/api/bess-status   (header X-API-Key: {DEMO_API_KEY})
  API docs       {web}/docs      (after logging in to the dashboard)
  metrics        {web}/metrics   (header Authorization: Bearer {DEMO_API_KEY})
  exchange       http://127.0.0.1:{EXCHANGE_PORT}/api/market-data
  MQTT broker    mqtt://127.0.0.1:{MQTT_PORT}   topics bess/{cfg.site.id}/#
{plant}
  SCADA face     Modbus TCP 127.0.0.1:{cfg.scada.modbus.port}, OPC UA opc.tcp://127.0.0.1:{cfg.scada.opcua.port}
{iec104_line(cfg)}  logs           {state_dir / "logs"}
Press Ctrl-C to stop.""",
            flush=True,
        )
        if args.orders and cfg.trading.auto.enabled:
            report_auto_trading(web, lambda text: print(text, flush=True))
        elif args.orders:
            print("  auto-trading   off: this site file does not enable trading.auto", flush=True)
        else:
            print("  auto-trading   off (--no-orders): the site only follows trades placed by hand", flush=True)
        deadline = time.monotonic() + args.duration_s if args.duration_s else None
        while not stop_requested:
            died = demo.check()
            if died:
                print(f"demo: {died}", file=sys.stderr, flush=True)
                code = 1
                break
            if deadline and time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("stopping ...", flush=True)
        demo.stop()
        print("stopped: all demo processes ended, ports freed.", flush=True)
        if tmp:
            tmp.cleanup()
    return code
