"""`bess-edge`: run the daemon, the demo, the simulators, the exchange; check a config; add a trade by hand;
backtest the trading strategies."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import date
from pathlib import Path

from controller.config import ConfigError, load_config, read_env_file, transport_check

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEMO_CONFIG = REPO_ROOT / "config" / "demo.yaml"


def _load_env_file(path: str | None) -> None:
    """Secrets from an env file (systemd EnvironmentFile syntax) fill what the environment lacks."""
    if path:
        for k, v in read_env_file(path).items():
            os.environ.setdefault(k, v)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(f"{e.source}: INVALID", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    # what `run` would refuse in this environment (MQTT_URL, EXCHANGE_BASE_URL), without needing the secrets
    _load_env_file(args.env_file)
    env_errors, env_warnings = transport_check(cfg, dict(os.environ))
    if env_errors:
        print(f"{args.file}: INVALID in this environment", file=sys.stderr)
        for line in env_errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    lim = cfg.limits
    print(f"{args.file}: OK")
    print(f"  site {cfg.site.id} ({cfg.mode}), cycle {cfg.cycle.period_s:g} s")
    for u in cfg.unit_plan():
        indent = "  "
        if cfg.units:
            print(f"  unit {u.unit}: {u.rated_mw:g} MW / {u.capacity_mwh:g} MWh")
            indent = "    "
        print(f"{indent}bms  {u.bms_name}: {u.bms.protocol} {u.bms.host}:{u.bms.port} profile {u.bms.profile}")
        print(f"{indent}pcs  {u.pcs_name}: {u.pcs.protocol} {u.pcs.host}:{u.pcs.port} profile {u.pcs.profile}")
    meter = cfg.meter()
    if meter is not None:
        name, dev = meter
        print(f"  meter {name}: {dev.protocol} {dev.host}:{dev.port} profile {dev.profile} (POI)")
    print(
        f"  limits: charge {lim.p_charge_max_mw:g} MW, discharge {lim.p_discharge_max_mw:g} MW, "
        f"SoC {lim.soc_min_pct:g}-{lim.soc_max_pct:g} %, derate {lim.t_derate_c:g}-{lim.t_max_c:g} °C, "
        f"grid {lim.grid_limit_mw:g} MW"
    )
    print(f"  battery: {cfg.battery.capacity_mwh:g} MWh, round trip {cfg.battery.round_trip_efficiency:.1%}")
    auto, fc = cfg.trading.auto, cfg.forecast
    if auto.enabled:
        print(
            f"  auto-trading: on, replan {auto.replan_s:g} s, orders <= {auto.max_order_mw:g} MW, positions <= "
            f"{auto.max_position_mw:g} MW, margin {auto.min_margin_eur_mwh:g} EUR/MWh; forecast {fc.source}, "
            f"{fc.horizon_h:g} h"
        )
    for line in cfg.warnings + env_warnings:
        print(f"  warning: {line}")
    return 0


def _config_or_exit(path: str):
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"{e.source}: INVALID", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.site import main_simulate

    cfg = _config_or_exit(args.config)
    if args.time_scale:
        cfg.simulator.time_scale = args.time_scale
    try:
        asyncio.run(main_simulate(cfg))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_exchange(args: argparse.Namespace) -> int:
    from simulators.exchange.app import main_exchange

    _load_env_file(args.env_file)
    return main_exchange(args) or 0


def cmd_run(args: argparse.Namespace) -> int:
    from controller.daemon import main_run

    _load_env_file(args.env_file)
    cfg = _config_or_exit(args.config)
    try:
        return main_run(cfg, args)
    except ConfigError as e:  # what the daemon cannot run yet, found as it builds the plant (DeviceSet)
        print(f"{e.source}: cannot run", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import main_demo

    return main_demo(args)


def cmd_trade_add(args: argparse.Namespace) -> int:
    from controller.trading.orders import add_trade_cli

    return add_trade_cli(args)


def cmd_backtest(args: argparse.Namespace) -> int:
    from controller.backtest.run import main_backtest

    problems = []
    if not (0 < args.days <= 60):
        problems.append(f"--days: must be > 0 and <= 60 (got {args.days:g})")
    if not (1 <= args.counterparties <= 100):
        problems.append(f"--counterparties: must be 1..100 (got {args.counterparties})")
    deg = args.plan_degradation_eur_mwh
    if deg is not None and not (0 <= deg <= 10_000):  # NaN fails both comparisons
        problems.append(f"--plan-degradation-eur-mwh: must be 0..10000 (got {deg})")
    start = None
    if args.start:
        try:
            start = date.fromisoformat(args.start)
        except ValueError:
            problems.append(f"--start: expected YYYY-MM-DD (got {args.start!r})")
    if problems:
        for line in problems:
            print(f"backtest: {line}", file=sys.stderr)
        return 2
    cfg = _config_or_exit(args.config)
    return main_backtest(cfg, args.days, args.seed, start, args.counterparties, deg)


def cmd_probe(args: argparse.Namespace) -> int:
    from controller.probe.command import main_probe

    return main_probe(args)


def cmd_fcr_test(args: argparse.Namespace) -> int:
    from controller.services.prequal import main_fcr_test

    return main_fcr_test(_config_or_exit(args.config), args)


def _add_fcr_test(sub) -> None:
    s = sub.add_parser(
        "fcr-test",
        help="FCR prequalification run: drive the simulator's frequency, record the response, plot, pass/fail",
    )
    s.add_argument("--config", required=True, help="the site file (services.fcr, simulator.control_port)")
    s.add_argument("--control-url", help="the plant simulator's control API (default: from the site file)")
    s.add_argument("--plot", default="fcr-test.png", help="PNG to write (default: fcr-test.png)")
    s.add_argument("--fast", action="store_true", help="short holds (a quick look, tests): about 1.5 min, not 1 h")
    s.add_argument("--hold-s", type=float, default=None, help="hold of each step (default 120 s; --fast 5 s)")
    s.add_argument("--full-s", type=float, default=None, help="full activation each way (default 900 s; --fast 10 s)")
    s.add_argument("--sample-s", type=float, default=0.1, help="sampling period of the response")
    s.set_defaults(func=cmd_fcr_test)


def _add_backtest(sub) -> None:
    s = sub.add_parser(
        "backtest",
        help="compare trading strategies (optimiser, naive rule, perfect foresight) on the exchange simulator",
    )
    s.add_argument("--days", type=float, default=7.0)
    s.add_argument("--seed", type=int, default=42, help="the exchange simulator's price curve and counterparties")
    s.add_argument("--config", default=str(DEFAULT_DEMO_CONFIG), help="the site (limits, battery, trading)")
    s.add_argument("--start", default=None, help="first day, YYYY-MM-DD (default 2026-11-02, a Monday)")
    s.add_argument("--counterparties", type=int, default=8)
    s.add_argument(
        "--plan-degradation-eur-mwh",
        type=float,
        default=None,
        help="the wear cost the optimiser plans with (default: trading.degradation_eur_mwh; wear is always charged "
        "at that)",
    )
    s.set_defaults(func=cmd_backtest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bess-edge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check-config", help="validate a site config and its device profiles")
    s.add_argument("file")
    s.add_argument("--env-file", help="also check MQTT_URL / EXCHANGE_BASE_URL from this KEY=VALUE file")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("run", help="run the controller daemon")
    s.add_argument("--config", required=True)
    s.add_argument("--state-dir", default="/var/lib/bess-edge")
    s.add_argument("--env-file", help="KEY=VALUE file with API_KEY, HMAC_SECRET, MQTT_URL, EXCHANGE_BASE_URL")
    s.add_argument("--time-scale", type=float, default=None, help="clock speed-up (tests, demo)")
    s.add_argument("--log-format", choices=["json", "text"], default="json")
    s.add_argument(
        "--no-auto-trading",
        dest="auto_trading",
        action="store_false",
        help="start with the auto-trader switched off, whatever trading.auto.enabled says (the kill switch on the "
        "dashboard and POST /api/auto can turn it on)",
    )
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="everything on one machine: simulators, exchange, broker, controller, dashboard")
    s.add_argument("--config", default=str(DEFAULT_DEMO_CONFIG))
    s.add_argument("--state-dir", default=None, help="default: a temporary directory")
    s.add_argument("--counterparties", type=int, default=8)
    s.add_argument("--duration-s", type=float, default=None, help="stop by itself after this many seconds")
    s.add_argument(
        "--no-orders",
        dest="orders",
        action="store_false",
        help="leave the site idle: the controller starts with the auto-trader switched off (no orders of its own)",
    )
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="plant simulators only (BMS + PCS over Modbus TCP, BMS over OPC UA)")
    s.add_argument("--config", required=True)
    s.add_argument("--time-scale", type=float, default=None)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("exchange", help="the exchange simulator only")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9000)
    s.add_argument("--counterparties", type=int, default=8)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--env-file")
    s.set_defaults(func=cmd_exchange)

    _add_fcr_test(sub)

    _add_backtest(sub)

    from controller.probe.arguments import add_arguments as probe_arguments

    s = sub.add_parser(
        "probe", help="commissioning: scan a device (SunSpec, register ranges, OPC UA) and draft its profile"
    )
    probe_arguments(s)
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("trade", help="commissioning: add an executed trade by hand")
    tsub = s.add_subparsers(dest="trade_command", required=True)
    t = tsub.add_parser("add", help="store a trade and print the ack")
    t.add_argument("--state-dir", default="/var/lib/bess-edge")
    t.add_argument("--json", help="the trade as JSON (DESIGN.md's fields)")
    t.add_argument("--side", choices=["buy", "sell"])
    t.add_argument("--quantity-mw", type=float)
    t.add_argument("--price-eur-mwh", type=float, default=0.0)
    t.add_argument("--delivery-start")
    t.add_argument("--delivery-end")
    t.add_argument("--market", default="intraday")
    t.add_argument("--trade-id")
    t.set_defaults(func=cmd_trade_add)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
