"""Strict site files (issue 11): every number finite and in range, relations checked across the file, the OPC UA
users file and the PCS's reversion points checked at load, plain-text links to remote hosts refused in
production. Each must-fail example in config/must-fail/ goes through the real `bess-edge check-config`; every
numeric field the models define is set to NaN and to infinity in turn."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from controller.config import ConfigError, SiteConfig, is_loopback_host, load_config, load_secrets, transport_check

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
MUST_FAIL = sorted((CONFIG / "must-fail").glob("*.yaml"))
SHIPPED = sorted(CONFIG.glob("*.yaml"))
GOOD_SECRETS = {"API_KEY": "site-key-0123456789", "HMAC_SECRET": "site-secret-0123456789abcdef"}


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real `bess-edge check-config`, with an environment free of the caller's transport variables."""
    base = {k: v for k, v in os.environ.items() if k not in ("MQTT_URL", "EXCHANGE_BASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**base, **(env or {})},
        timeout=60,
    )


def header(path: Path) -> tuple[str, dict[str, str]]:
    """The `# expect: TEXT` first line and any `# env: KEY=VALUE` lines of a must-fail example."""
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("# expect: "), f"{path.name}: first line must be '# expect: <text>'"
    env = {}
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        if line.startswith("# env: "):
            k, _, v = line.removeprefix("# env: ").partition("=")
            env[k] = v
    return lines[0].removeprefix("# expect: ").strip(), env


# ------------------------------------------------------------------------------------------ examples via the CLI
def test_the_must_fail_folder_covers_the_issue():
    names = {p.stem for p in MUST_FAIL}
    assert {
        "nan-t-max",
        "inf-stale-after",
        "soc-min-ge-max",
        "t-derate-ge-t-max",
        "reversion-3600",
        "negative-capacity",
        "bad-port",
        "pcs-no-reversion",
        "opcua-users-missing",
        "insecure-mqtt-production",
        "insecure-exchange-production",
    } <= names


@pytest.mark.parametrize("path", MUST_FAIL, ids=lambda p: p.stem)
def test_must_fail_example_is_refused_by_check_config(path):
    expect, env = header(path)
    res = check_config(path, env)
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out}"
    assert expect in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_example_passes_check_config(path):
    res = check_config(path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{path}: OK" in res.stdout


# -------------------------------------------------------------------------------- every number: NaN and infinity
def base_site(tmp_path: Path) -> dict[str, Any]:
    """A valid site file with every section present: demo-single-modbus.yaml, profiles made absolute, MQTT TLS on."""
    raw = yaml.safe_load((CONFIG / "demo-single-modbus.yaml").read_text())
    for dev in raw["devices"].values():
        dev["profile"] = str(CONFIG / dev["profile"])
    raw.setdefault("mqtt", {})["tls"] = {"insecure": False}
    return raw


def numeric_paths(model: type[BaseModel], raw: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """YAML path of every int/float field reachable from `model` (read from the pydantic models, not a list kept
    by hand); dict fields of models follow the keys present in `raw` (the devices)."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # set by the loader, not by the file
        yield from _paths_of(field.annotation, raw.get(name) if isinstance(raw, dict) else None, prefix + (name,))


def _paths_of(ann: Any, raw: Any, path: tuple) -> Iterator[tuple]:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is bool:
        return
    if ann in (int, float):
        yield path
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        yield from numeric_paths(ann, raw or {}, path)
    elif origin is dict and isinstance(raw, dict):
        for key, value in raw.items():
            yield from _paths_of(args[1], value, path + (key,))
    elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if a is not type(None):
                yield from _paths_of(a, raw, path)


def set_path(raw: dict, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(raw)
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


def test_the_walker_sees_every_section(tmp_path):
    paths = {".".join(p) for p in numeric_paths(SiteConfig, base_site(tmp_path))}
    for expected in (
        "limits.t_max_c",
        "limits.stale_after_s",
        "devices.pcs.reversion_timeout_s",
        "devices.bms.poll_interval_s",
        "battery.capacity_mwh",
        "cycle.period_s",
        "mqtt.keepalive_s",
        "web.port",
        "scada.modbus.port",
        "exchange.timeout_s",
        "simulator.ambient_c",
        "simulator.control_port",
    ):
        assert expected in paths
    assert len(paths) > 50


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_numeric_field_refuses_non_finite_values_naming_its_path(tmp_path, value):
    raw = base_site(tmp_path)
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    load_config(site)  # the base is valid
    missed = []
    paths = list(numeric_paths(SiteConfig, raw))
    for path in paths:
        site.write_text(yaml.safe_dump(set_path(raw, path, value)))  # YAML's .nan / .inf / -.inf
        dotted = ".".join(map(str, path))
        try:
            load_config(site)
        except ConfigError as e:
            if not any(line.startswith(f"{dotted} (line ") for line in e.errors):
                missed.append(f"{dotted}: refused, but not by name: {e.errors}")
        else:
            missed.append(f"{dotted}: accepted {value}")
    assert not missed, "\n".join(missed)


def test_nan_and_inf_from_the_issue_exit_2_through_the_cli(tmp_path):
    raw = base_site(tmp_path)
    for path, value, name in ((("limits", "t_max_c"), math.nan, "nan"), (("limits", "stale_after_s"), math.inf, "inf")):
        site = tmp_path / f"{name}.yaml"
        site.write_text(yaml.safe_dump(set_path(raw, path, value)))
        res = check_config(site)
        assert res.returncode == 2, res.stdout
        assert f"{'.'.join(path)} (line " in res.stderr and f"finite number (got {name})" in res.stderr


# ---------------------------------------------------------------------------------------- relations, as properties
DEMO_MODBUS = yaml.safe_load((CONFIG / "demo-single-modbus.yaml").read_text())


def site_dict(**limits: float) -> dict[str, Any]:
    raw = copy.deepcopy(DEMO_MODBUS)
    raw["limits"].update(limits)
    return raw


def validates(raw: dict) -> bool:
    try:
        SiteConfig.model_validate(raw)
    except Exception:
        return False
    return True


temps = st.floats(min_value=-60, max_value=110, allow_nan=False)


@given(t_min=temps, t_derate=temps, t_max=temps)
def test_temperatures_accepted_exactly_when_ordered_and_plausible(t_min, t_derate, t_max):
    ok = t_min < t_derate < t_max and all(-50 <= t <= 100 for t in (t_min, t_derate, t_max))
    assert validates(site_dict(t_min_charge_c=t_min, t_derate_c=t_derate, t_max_c=t_max)) == ok


@given(lo=st.floats(-10, 110, allow_nan=False), hi=st.floats(-10, 110, allow_nan=False))
def test_soc_window_accepted_exactly_when_inside_0_100_and_ordered(lo, hi):
    ok = 0 <= lo < hi <= 100  # taper band 0 here: any non-empty window
    assert validates(site_dict(soc_min_pct=lo, soc_max_pct=hi, soc_taper_band_pct=0)) == ok


@given(period=st.floats(0.1, 10), stale=st.floats(0.01, 100, allow_nan=False))
def test_stale_after_accepted_exactly_above_the_cycle_and_at_most_60_s(period, stale):
    raw = site_dict(stale_after_s=stale)
    raw["cycle"]["period_s"] = period
    for dev in raw["devices"].values():  # keep the devices' own relations out of the way
        dev["poll_interval_s"], dev["timeout_s"] = 0.001, 0.001
        dev.pop("reversion_timeout_s", None)
    raw["devices"]["pcs"]["reversion_timeout_s"] = 300
    assert validates(raw) == (period < stale <= 60)


def test_relation_errors_are_all_reported_with_their_paths(tmp_path):
    raw = base_site(tmp_path)
    raw["cycle"]["period_s"] = 4
    raw["devices"]["bms"]["poll_interval_s"] = 2
    raw["devices"]["pcs"]["reversion_timeout_s"] = 5
    raw["web"] = {"port": 5020}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    text = "\n".join(exc.value.errors)
    assert "limits.stale_after_s (line" in text and "must be > cycle.period_s (got 3 <= 4)" in text
    assert "devices.bms.poll_interval_s (line" in text and "(got 2 > 1)" in text
    assert "devices.pcs.reversion_timeout_s (line" in text and "(got 5 < 8)" in text
    assert "scada.modbus.port (line" in text and "port 5020 is already web.port's" in text


# ------------------------------------------------------------------------------------------- PCS reversion points
NO_REVERSION = CONFIG / "must-fail" / "pcs-no-reversion.yaml"


def test_pcs_without_reversion_points_loads_only_when_the_site_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"devices\.pcs\.profile \(line \d+\): profile 'pcs-no-reversion' has no"):
        load_config(NO_REVERSION)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "pcs-no-reversion.yaml").write_text(
        (NO_REVERSION.parent / "profiles" / "pcs-no-reversion.yaml").read_text()
    )
    text = NO_REVERSION.read_text().replace("../profiles/", str(CONFIG / "profiles") + "/")
    text = text.replace("reversion_timeout_s: 10}", "reversion_timeout_s: 10, allow_no_reversion: true}")
    site = tmp_path / "site.yaml"
    site.write_text(text)
    cfg = load_config(site)
    assert (
        len(cfg.warnings) == 1 and "devices.pcs: profile 'pcs-no-reversion' has no reversion point" in cfg.warnings[0]
    )
    res = check_config(site)
    assert res.returncode == 0, res.stderr
    assert "warning: devices.pcs: profile 'pcs-no-reversion' has no reversion point" in res.stdout
    assert load_config(CONFIG / "demo.yaml").warnings == []


def test_allow_no_reversion_is_for_a_pcs_only(tmp_path):
    raw = base_site(tmp_path)
    raw["devices"]["bms"]["allow_no_reversion"] = True
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ConfigError, match=r"devices\.bms\.allow_no_reversion \(line \d+\): only for a device with role pcs"
    ):
        load_config(site)


def test_reversion_timeout_must_fit_the_profiles_range(tmp_path):
    prof = yaml.safe_load((CONFIG / "profiles" / "sunspec-pcs.yaml").read_text())
    prof["points"]["wset_rvrt_tms"]["max"] = 60
    (tmp_path / "narrow-pcs.yaml").write_text(yaml.safe_dump(prof))
    raw = base_site(tmp_path)
    raw["devices"]["pcs"]["profile"] = "narrow-pcs.yaml"
    raw["devices"]["pcs"]["reversion_timeout_s"] = 120
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    assert any(
        line.startswith("devices.pcs.reversion_timeout_s (line") and "accepts wset_rvrt_tms 0..60 s (got 120 s)" in line
        for line in exc.value.errors
    ), exc.value.errors


# ----------------------------------------------------------------------------------------- the OPC UA users file
USER_OK = {"password": "scrypt$" + "ab" * 16 + "$" + "cd" * 64, "role": "operator"}


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "cannot read"),
        ("users: [unclosed", "not valid YAML"),
        ("- a list\n", "must be a mapping with one key, users:"),
        ("users: {}\n", "no users (nobody could log in)"),
        (yaml.safe_dump({"users": {"op": {"role": "operator"}}}), "users.op.password: must be scrypt$"),
        (yaml.safe_dump({"users": {"op": {**USER_OK, "password": "hunter2"}}}), "users.op.password: must be scrypt$"),
        (
            yaml.safe_dump({"users": {"op": {**USER_OK, "role": "admin"}}}),
            "users.op.role: must be one of viewer, operator",
        ),
        (yaml.safe_dump({"users": {"op": {**USER_OK, "rolle": "x"}}}), "users.op.rolle: unknown key"),
        (yaml.safe_dump({"users": {"op": "operator"}}), "users.op: must be a mapping"),
    ],
    ids=[
        "missing",
        "not-yaml",
        "not-mapping",
        "empty",
        "no-password",
        "plain-password",
        "bad-role",
        "unknown-key",
        "not-a-dict",
    ],
)
def test_bad_users_file_is_named_with_its_yaml_path(tmp_path, content, expect):
    raw = base_site(tmp_path)
    raw["scada"]["opcua"]["users_file"] = "users.yaml"
    if content is not None:
        (tmp_path / "users.yaml").write_text(content)
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    assert any(line.startswith("scada.opcua.users_file (line") and expect in line for line in exc.value.errors), (
        exc.value.errors
    )


def test_good_users_file_loads_and_a_disabled_face_is_not_checked(tmp_path):
    raw = base_site(tmp_path)
    raw["scada"]["opcua"]["users_file"] = "users.yaml"
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": {"op": USER_OK}}))
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    assert load_config(site).scada.opcua.users_file == str(tmp_path / "users.yaml")
    raw["scada"]["opcua"] = {"enabled": False, "users_file": "gone.yaml"}
    site.write_text(yaml.safe_dump(raw))
    load_config(site)


def test_the_shipped_users_file_is_what_scada_opcua_reads():
    from controller.scada.opcua import PasswordUserManager

    users = PasswordUserManager.from_file(CONFIG / "scada" / "users.yaml").users
    assert {u["role"] for u in users.values()} == {"viewer", "operator"}


# ---------------------------------------------------------------------------- plain-text transport in production
def production(tmp_path: Path, **over: Any) -> SiteConfig:
    raw = base_site(tmp_path)
    raw["mode"] = "production"
    raw["mqtt"].pop("tls")
    raw["scada"]["opcua"]["enabled"] = False
    for k, v in over.items():
        raw[k] = v if not isinstance(v, dict) else {**raw.get(k, {}), **v}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw))
    return load_config(site)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MQTT_URL": "mqtt://broker.example.net:1883"}, "MQTT_URL"),
        ({"MQTT_URL": "tcp://10.0.0.5"}, "MQTT_URL"),
        ({"EXCHANGE_BASE_URL": "http://exchange.example.net"}, "EXCHANGE_BASE_URL"),
        ({"EXCHANGE_BASE_URL": "http://192.0.2.7:9000"}, "EXCHANGE_BASE_URL"),
    ],
)
def test_production_refuses_plain_text_to_a_remote_host(tmp_path, env, variable):
    cfg = production(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_secrets(cfg, {**GOOD_SECRETS, **env})
    assert any(line.startswith(f"{variable}: ") and "allow_insecure: true" in line for line in exc.value.errors)
    # accepted on purpose: a warning instead, every time the secrets are loaded (every start)
    ok = production(tmp_path, allow_insecure=True)
    for _ in range(2):
        secrets = load_secrets(ok, {**GOOD_SECRETS, **env})
        assert len(secrets.warnings) == 1 and secrets.warnings[0].startswith(f"{variable}: ")


@pytest.mark.parametrize(
    "env",
    [
        {"MQTT_URL": "mqtt://127.0.0.1:1883", "EXCHANGE_BASE_URL": "http://127.0.0.1:9000"},
        {"MQTT_URL": "mqtt://localhost", "EXCHANGE_BASE_URL": "http://[::1]:9000"},
        {"MQTT_URL": "mqtt://127.8.9.10:1883", "EXCHANGE_BASE_URL": "http://LOCALHOST:9000"},
        {"MQTT_URL": "mqtts://broker.example.net", "EXCHANGE_BASE_URL": "https://exchange.example.net"},
        {},
    ],
)
def test_production_accepts_loopback_and_tls(tmp_path, env):
    assert load_secrets(production(tmp_path), {**GOOD_SECRETS, **env}).warnings == []


def test_mqtt_tls_section_counts_as_tls_unless_it_skips_the_certificate_check(tmp_path):
    env = {**GOOD_SECRETS, "MQTT_URL": "mqtt://broker.example.net:8883"}
    assert load_secrets(production(tmp_path, mqtt={"tls": {"ca_file": "ca.pem"}}), env).warnings == []
    with pytest.raises(ConfigError, match="mqtt.tls.insecure: true"):
        load_secrets(production(tmp_path, mqtt={"tls": {"insecure": True}}), env)
    # a disabled uplink does not connect: its URL does not matter
    assert load_secrets(production(tmp_path, mqtt={"enabled": False}), env).warnings == []


def test_demo_mode_and_bad_exchange_url(tmp_path):
    demo = load_config(CONFIG / "demo.yaml")
    assert transport_check(demo, {"MQTT_URL": "mqtt://broker.example.net"}) == ([], [])
    errors, _ = transport_check(demo, {"EXCHANGE_BASE_URL": "ftp://x"})
    assert errors and errors[0].startswith("EXCHANGE_BASE_URL: must be http(s)://")


def test_check_config_reports_what_run_would_refuse_in_this_environment(tmp_path):
    production(tmp_path)
    site = tmp_path / "site.yaml"
    res = check_config(site, {"EXCHANGE_BASE_URL": "http://exchange.example.net"})
    assert res.returncode == 2 and "EXCHANGE_BASE_URL: the exchange exchange.example.net" in res.stderr
    env_file = tmp_path / "site.env"
    env_file.write_text("MQTT_URL=mqtt://broker.example.net\n")
    res = subprocess.run(
        [sys.executable, "-m", "controller.cli", "check-config", str(site), "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("MQTT_URL", "EXCHANGE_BASE_URL")},
    )
    assert res.returncode == 2 and "MQTT_URL: the broker broker.example.net" in res.stderr
    assert check_config(site).returncode == 0


@given(st.ip_addresses())
def test_loopback_is_exactly_127_8_and_ipv6_1(ip):
    expected = ip.is_loopback or (getattr(ip, "ipv4_mapped", None) is not None and ip.ipv4_mapped.is_loopback)
    assert is_loopback_host(str(ip)) == expected
    assert is_loopback_host(f"[{ip}]") == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LocalHost.", True),
        ("a.localhost", True),
        ("localhost.example.net", False),
        ("broker", False),
        ("", False),
    ],
)
def test_loopback_names(host, expected):
    assert is_loopback_host(host) == expected
