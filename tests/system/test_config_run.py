"""`bess-edge run` (a real process) with the site-file problems of issue 11: a missing OPC UA users file and a
plain-text link to a remote exchange in production end the start with exit 2 and the line to fix, never a
traceback; the risks a site file accepts on purpose (allow_insecure, allow_no_reversion) are logged on every
start. The daemons here reach nothing: devices on free loopback ports nobody serves, MQTT, web and SCADA off,
and the remote exchange is only named (the daemon contacts it on API requests, which nobody makes)."""

from __future__ import annotations

import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
# `bess-edge` is controller.cli:main; run as a module of this checkout (the shared venv's console script may
# belong to another checkout)
BESS_EDGE = [sys.executable, "-m", "controller.cli"]
ENV = {
    "API_KEY": "run-test-key-0123456789",
    "HMAC_SECRET": "run-test-secret-0123456789abcdef",
    "MQTT_URL": "mqtt://127.0.0.1:1",
    "EXCHANGE_BASE_URL": "http://127.0.0.1:9",
}

pytestmark = pytest.mark.timeout(120)


def write_site(tmp_path: Path, **over: Any) -> Path:
    """demo-single-modbus.yaml in production mode, devices on unserved loopback ports, every face off, then `over`."""
    raw = yaml.safe_load((CONFIG / "demo-single-modbus.yaml").read_text())
    raw["mode"] = "production"
    for dev in raw["devices"].values():
        dev["port"] = free_port()
        dev["profile"] = str(CONFIG / dev["profile"])
    raw["mqtt"] = {"enabled": False}
    raw["web"] = {"enabled": False}
    raw["scada"] = {"modbus": {"enabled": False}, "opcua": {"enabled": False}}
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(site: Path, tmp_path: Path, fd_limit: int | None = None, **env: str) -> subprocess.CompletedProcess:
    """`bess-edge run` that is expected to refuse its start (bounded by the timeout); with `fd_limit`, under that
    open-descriptor limit (RLIMIT_NOFILE, as systemd's LimitNOFILE= sets it)."""

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    return subprocess.run(
        [*BESS_EDGE, "run", "--config", str(site), "--state-dir", str(tmp_path / "state"), "--log-format", "text"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), **ENV, **env},
        preexec_fn=limit_fds if fd_limit else None,
    )


def test_run_with_a_missing_users_file_exits_2_naming_it(tmp_path):
    site = write_site(tmp_path, scada={"opcua": {"enabled": True, "port": free_port(), "users_file": "users.yaml"}})
    res = run(site, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out[-3000:]}"
    assert "scada.opcua.users_file (line " in out and f"cannot read {tmp_path / 'users.yaml'}" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_run_refuses_a_connection_cap_its_descriptor_limit_cannot_hold(tmp_path):
    """A connection past the web's cap holds a descriptor until its 503 is closed, and a flood keeps a few accept
    waves of them open (web/server.py accept_wave): with the cap, the waves and what the plant needs not fitting
    in the process's limit, a flood would leave a Modbus or MQTT reconnect without a descriptor. So the start
    is refused, naming web.max_connections and the limit."""
    site = write_site(tmp_path, web={"enabled": True, "host": "127.0.0.1", "port": free_port(), "max_connections": 512})
    res = run(site, tmp_path, fd_limit=800)
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out[-3000:]}"
    assert "web.max_connections: 512 open connections do not fit" in out and "limit of 800" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_run_in_production_refuses_a_remote_exchange_over_http(tmp_path):
    res = run(write_site(tmp_path), tmp_path, EXCHANGE_BASE_URL="http://exchange.example.net:9000")
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out[-3000:]}"
    assert "EXCHANGE_BASE_URL: the exchange exchange.example.net is not on this machine" in out, out[-3000:]
    assert "allow_insecure: true" in out and "Traceback" not in out, out[-3000:]


def start_and_collect(site: Path, tmp_path: Path, wanted: list[str], env: dict[str, str]) -> str:
    """Start `bess-edge run`, read its log until every `wanted` text has appeared (bounded), stop it with
    SIGTERM and return the log."""
    proc = subprocess.Popen(
        [*BESS_EDGE, "run", "--config", str(site), "--state-dir", str(tmp_path / "state"), "--log-format", "text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=str(tmp_path),
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
            **ENV,
            **env,
        },
    )
    log = ""
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while not all(w in log for w in wanted) and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.5):
                line = proc.stdout.readline()
                log += line
        assert all(w in log for w in wanted), f"rc={proc.poll()}\n{log[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
    return log


def test_accepted_risks_are_logged_on_every_start(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "pcs-no-reversion.yaml").write_text(
        (CONFIG / "must-fail" / "profiles" / "pcs-no-reversion.yaml").read_text()
    )
    site = write_site(tmp_path, allow_insecure=True)
    raw = yaml.safe_load(site.read_text())
    raw["devices"]["pcs"].update(protocol="modbus", profile="profiles/pcs-no-reversion.yaml", allow_no_reversion=True)
    site.write_text(yaml.safe_dump(raw, sort_keys=False))
    wanted = [
        "accepted risk",
        "devices.pcs: profile 'pcs-no-reversion' has no reversion point",
        "EXCHANGE_BASE_URL: the exchange 192.0.2.7 is not on this machine",
        "accepted by allow_insecure: true",
    ]
    for _ in range(2):  # every start, not only the first
        log = start_and_collect(site, tmp_path, wanted, {"EXCHANGE_BASE_URL": "http://192.0.2.7:9000"})
        assert "Traceback" not in log, log[-3000:]
