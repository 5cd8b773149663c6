"""Site config validation: good files load, bad files name every error with its YAML path and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.config import ConfigError, load_config, load_secrets, parse_mqtt_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name", ["demo.yaml", "demo-modbus.yaml", "demo-single.yaml", "demo-single-modbus.yaml", "site.example.yaml"]
)
def test_shipped_configs_are_valid(name):
    cfg = load_config(ROOT / "config" / name)
    assert cfg.device("bms")[1].role == "bms"
    assert cfg.device("pcs")[1].role == "pcs"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    (tmp_path / "profiles").mkdir(exist_ok=True)
    for prof in (ROOT / "config" / "profiles").glob("*.yaml"):
        (tmp_path / "profiles" / prof.name).write_text(prof.read_text())
    return p


BAD = """\
site: {id: "bad site!"}
devices:
  bms: {role: bms, protocol: modbus, port: 99999, profile: profiles/generic-bms.yaml}
  pcs: {role: pcs, protocol: sunspec, port: 1503, profile: profiles/sunspec-pcs.yaml}
limits:
  p_charge_max_mw: -1
  p_discharge_max_mw: 10
  soc_min_pct: 20
  soc_max_pct: 10
  grid_limit_mw: 10
  bogus: 1
battery: {capacity_mwh: 20}
"""


def test_bad_config_names_every_error_with_path_and_line(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, BAD))
    errors = exc.value.errors
    text = "\n".join(errors)
    assert "site.id (line 1)" in text
    assert "devices.bms.port (line 3)" in text
    assert "limits.p_charge_max_mw (line 6)" in text
    assert "limits.soc_max_pct (line 9): must be > limits.soc_min_pct (got 10 <= 20)" in text
    assert "limits.bogus (line 11): unknown key" in text
    assert len(errors) == 5


def test_missing_profile_and_protocol_mismatch_are_named(tmp_path):
    text = (
        BAD.replace('"bad site!"', "ok")
        .replace("99999", "1502")
        .replace("-1", "10")
        .replace("soc_min_pct: 20", "soc_min_pct: 5")
        .replace("  bogus: 1\n", "")
    )
    text = text.replace("profiles/sunspec-pcs.yaml", "profiles/nope.yaml")
    text = text.replace(
        "protocol: modbus, port: 1502, profile: profiles/generic-bms.yaml",
        "protocol: opcua, port: 1502, profile: profiles/generic-bms.yaml",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    text = "\n".join(exc.value.errors)
    assert "devices.pcs.profile (line 4):" in text and "nope.yaml" in text
    assert "devices.bms.profile (line 3): profile 'generic-bms' is for modbus, device says opcua" in text


def test_check_config_cli_exit_codes(tmp_path):
    good = subprocess.run(
        [sys.executable, "-m", "controller.cli", "check-config", str(ROOT / "config" / "demo.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and "site demo" in good.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "controller.cli", "check-config", str(write(tmp_path, BAD))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2
    assert "limits.soc_max_pct (line 9): must be > limits.soc_min_pct (got 10 <= 20)" in bad.stderr


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("site: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_secrets_refuse_demo_values_outside_demo_mode():
    cfg = load_config(ROOT / "config" / "site.example.yaml")
    assert cfg.mode == "production"
    with pytest.raises(ConfigError) as exc:
        load_secrets(cfg, {"API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret"})
    text = "\n".join(exc.value.errors)
    assert "API_KEY: the demo key" in text and "HMAC_SECRET: the demo secret" in text
    with pytest.raises(ConfigError, match="API_KEY: not set"):
        load_secrets(cfg, {"HMAC_SECRET": "x" * 32})
    s = load_secrets(cfg, {"API_KEY": "k1, k2", "HMAC_SECRET": "s", "MQTT_URL": "mqtts://u:p%40ss@broker:8884"})
    assert s.api_keys == ["k1", "k2"]
    m = s.mqtt
    assert (m.host, m.port, m.username, m.password, m.tls) == ("broker", 8884, "u", "p@ss", True)
    demo = load_config(ROOT / "config" / "demo.yaml")
    assert load_secrets(demo, {"API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret"}).api_keys == ["demo"]


def test_exchange_api_key_has_one_purpose():
    """EXCHANGE_API_KEY is what the site presents to the exchange: optional (a site may only receive trades), not
    the demo key outside demo mode, and never one of the site's own API keys."""
    cfg = load_config(ROOT / "config" / "site.example.yaml")
    base = {"API_KEY": "local-1", "API_KEY_READ": "reader-1", "HMAC_SECRET": "s" * 32}
    assert load_secrets(cfg, base).exchange_api_key is None
    assert load_secrets(cfg, {**base, "EXCHANGE_API_KEY": " ex-1 "}).exchange_api_key == "ex-1"
    for bad, needle in (("demo", "demo key"), ("local-1", "local keys"), ("reader-1", "local keys")):
        with pytest.raises(ConfigError) as exc:
            load_secrets(cfg, {**base, "EXCHANGE_API_KEY": bad})
        assert any(e.startswith("EXCHANGE_API_KEY:") and needle in e for e in exc.value.errors), exc.value.errors
    demo = load_config(ROOT / "config" / "demo.yaml")  # the demo's fixed keys: demo everywhere
    assert (
        load_secrets(
            demo, {"API_KEY": "demo", "EXCHANGE_API_KEY": "demo", "HMAC_SECRET": "phoenyra_demo_secret"}
        ).exchange_api_key
        == "demo"
    )


def test_mqtt_url_scheme_is_checked():
    with pytest.raises(ValueError, match="MQTT_URL: scheme"):
        parse_mqtt_url("http://x")
    assert parse_mqtt_url("mqtt://h").port == 1883


def test_relative_certificate_paths_are_relative_to_the_site_file(tmp_path, monkeypatch):
    site = write(tmp_path, (ROOT / "config" / "demo-single-modbus.yaml").read_text())
    data = yaml.safe_load(site.read_text())
    data.setdefault("web", {})["tls"] = {"enabled": True, "cert_file": "tls/web.pem", "key_file": "/abs/web.key"}
    data.setdefault("mqtt", {})["tls"] = {"ca_file": "ca.pem"}
    site.write_text(yaml.safe_dump(data))
    monkeypatch.chdir("/")  # as under systemd
    cfg = load_config(site)
    assert cfg.web.tls.cert_file == str(tmp_path / "tls" / "web.pem")
    assert cfg.web.tls.key_file == "/abs/web.key"
    assert cfg.mqtt.tls.ca_file == str(tmp_path / "ca.pem")
