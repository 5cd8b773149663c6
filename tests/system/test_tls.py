"""HTTPS on a real daemon (plant simulators on loopback, MQTT and SCADA off): with TLS on and no certificate
given, a self-signed one is generated into the state directory on first start (key 0600), its SHA-256
fingerprint printed and logged, and reused on the next start; clients that pin it reach /healthz, the API and
the wss:// websocket, under every name it claims; plain http on the port fails. A configured certificate and
key are served as they are; a missing, unreadable or mismatched one stops the start with the YAML path to fix.
Every handshake is a real one, against the certificate the test reads from disk, never `verify=False`."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controller.config import ConfigError, Secrets, SiteConfig
from controller.daemon import Daemon
from tests.fixtures.controller import device_ports, site_config, wait_for
from tests.fixtures.plant import make_plant, plant  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "tls-test-key-0123456789abcdef"
HMAC_SECRET = "tls-test-secret-0123456789abcdef"
IO_TIMEOUT_S = 10

pytestmark = pytest.mark.timeout(60)


def secrets() -> Secrets:
    return Secrets(
        api_keys=[API_KEY],
        hmac_secret=HMAC_SECRET,
        mqtt_url="mqtt://127.0.0.1:1",
        exchange_base_url="http://127.0.0.1:9",
    )


def tls_site(tmp_path: Path, ports: dict[str, int], **tls: str) -> SiteConfig:
    """The demo site file (mode demo) on the plant's ports, web on a free port with TLS on, MQTT and SCADA off."""
    return site_config(
        tmp_path,
        ports,
        mqtt={"enabled": False},
        scada={"modbus": {"enabled": False}, "opcua": {"enabled": False}},
        web={"tls": {"enabled": True, **tls}},
    )


@asynccontextmanager
async def running_daemon(cfg: SiteConfig, state_dir: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(cfg, secrets(), state_dir)
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


def pinned(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate, with hostname checks and strict X.509 checks on."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def sha256_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest().upper()


def file_fingerprint(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return sha256_fingerprint(der)


def colons(hex_upper: str) -> str:
    return ":".join(hex_upper[i : i + 2] for i in range(0, len(hex_upper), 2))


async def served_certificate(port: int, ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    """DER of the certificate the server presents in a real handshake verified by `ctx` for `server_hostname`."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname), IO_TIMEOUT_S
    )
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), IO_TIMEOUT_S)


async def assert_port_closed(port: int) -> None:
    with pytest.raises(OSError):
        _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT_S)
        w.close()


def san_of(cert: Path) -> tuple[set[str], set[str]]:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(i) for i in san.get_values_for_type(x509.IPAddress)}


# ------------------------------------------------------------------------------------- self-signed
async def test_self_signed_certificate_made_on_first_start_then_reused(plant, tmp_path, capsys, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="bess.tls")
    state = tmp_path / "state"
    tls_dir = state / "tls"
    cert, key = tls_dir / "web-cert.pem", tls_dir / "web-key.pem"
    cfg = tls_site(tmp_path, device_ports(plant))
    port = cfg.web.port
    assert not tls_dir.exists()

    async with running_daemon(cfg, state) as daemon:
        # --- generated into the state directory, the key private, the fingerprint printed and logged
        assert cert.is_file() and key.is_file(), sorted(p.name for p in state.rglob("*"))
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
        assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700, oct(tls_dir.stat().st_mode)
        fp = file_fingerprint(cert)
        out = capsys.readouterr().out
        assert colons(fp) in out and str(cert) in out, out
        generated = [r for r in caplog.records if r.name == "bess.tls" and "generated" in r.getMessage()]
        assert len(generated) == 1 and generated[0].sha256 == colons(fp), [r.__dict__ for r in caplog.records]
        assert daemon.web_url == f"https://127.0.0.1:{port}"

        # --- it claims this host: loopback, localhost and the host name
        dns, ips = san_of(cert)
        assert {"localhost", socket.gethostname()} <= dns and "127.0.0.1" in ips, (dns, ips)
        ctx = pinned(cert)
        for name in ("127.0.0.1", "localhost", socket.gethostname()):
            der = await served_certificate(port, ctx, name)
            assert sha256_fingerprint(der) == fp, name
        # ... and nothing else; an unpinned client does not trust it
        with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
            await served_certificate(port, ctx, "not-this-host.invalid")
        with pytest.raises(ssl.SSLCertVerificationError):
            await served_certificate(port, ssl.create_default_context(), "localhost")

        # --- the API over https with the pinned certificate
        await wait_for(lambda: daemon.controller.stats.good_cycles >= 1, 10, "a good control cycle")
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=IO_TIMEOUT_S) as client:
            r = await client.get("/healthz")
            assert r.status_code == 200 and r.json()["status"] == "ok", r.text
            r = await client.get("/api/bess-status", headers={"X-API-Key": API_KEY})
            assert r.status_code == 200 and r.json()["status"] == "online" and 0 < r.json()["soc_pct"] < 100, r.text
            assert (await client.get("/api/bess-status")).status_code == 401

            # --- login, then the websocket over wss:// with the token issued to the session
            r = await client.post("/api/login", json={"api_key": API_KEY})
            assert r.status_code == 200, r.text
            cookie = r.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie, cookie  # over https the session cookie is Secure
            r = await client.get("/api/ws-token")  # the session cookie, no API key header
            assert r.status_code == 200, r.text
            token = r.json()["token"]
        async with websockets.connect(
            f"wss://127.0.0.1:{port}/ws?token={token}", ssl=ctx, open_timeout=IO_TIMEOUT_S, close_timeout=2
        ) as ws:
            msg = json.loads(await asyncio.wait_for(ws.recv(), IO_TIMEOUT_S))
        assert msg["status"] == "online" and 0 < msg["soc_pct"] < 100 and msg["mode"], msg

        # --- plain http (and ws) on the TLS port get no answer
        async with httpx.AsyncClient(timeout=IO_TIMEOUT_S) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
        with pytest.raises((websockets.exceptions.InvalidHandshake, OSError, EOFError)):
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token=x", open_timeout=IO_TIMEOUT_S):
                pass
    await assert_port_closed(port)

    # --- second start on the same state directory: the same certificate, nothing generated or printed
    cert_bytes, key_bytes = cert.read_bytes(), key.read_bytes()
    caplog.clear()
    cfg2 = tls_site(tmp_path, device_ports(plant))
    async with running_daemon(cfg2, state):
        assert cert.read_bytes() == cert_bytes and key.read_bytes() == key_bytes
        assert "generated" not in capsys.readouterr().out
        reused = [r for r in caplog.records if r.name == "bess.tls"]
        assert [r.sha256 for r in reused] == [colons(fp)] and "generated" not in reused[0].getMessage(), [
            r.getMessage() for r in reused
        ]
        der = await served_certificate(cfg2.web.port, pinned(cert), "localhost")
        assert sha256_fingerprint(der) == fp
    await assert_port_closed(cfg2.web.port)


# ------------------------------------------------------------------------------------- configured pair
def make_pair(directory: Path, common_name: str = "bess-test.example") -> tuple[Path, Path, rsa.RSAPrivateKey]:
    """An RSA key and a self-signed certificate for `common_name` and 127.0.0.1, as a site's own PKI might."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "site-cert.pem", directory / "site-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    os.chmod(key_path, 0o640)  # e.g. root:bess-edge 0640: used as it is, not "fixed"
    return cert_path, key_path, key


async def test_configured_certificate_is_served_as_it_is(plant, tmp_path, capsys):  # noqa: F811
    cert, key, _ = make_pair(tmp_path / "etc")
    before = (cert.read_bytes(), key.read_bytes(), stat.S_IMODE(key.stat().st_mode))
    cfg = tls_site(tmp_path, device_ports(plant), cert_file=str(cert), key_file=str(key))
    state = tmp_path / "state"
    async with running_daemon(cfg, state):
        ctx = pinned(cert)
        for name in ("bess-test.example", "127.0.0.1"):
            der = await served_certificate(cfg.web.port, ctx, name)
            assert sha256_fingerprint(der) == file_fingerprint(cert), name
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{cfg.web.port}", verify=ctx, timeout=IO_TIMEOUT_S
        ) as client:
            assert (await client.get("/healthz")).status_code == 200
            r = await client.get("/api/bess-status", headers={"X-API-Key": API_KEY})
            assert r.status_code == 200 and "soc_pct" in r.json(), r.text
    await assert_port_closed(cfg.web.port)
    assert not (state / "tls").exists(), "a configured certificate must not make a self-signed one"
    assert "generated" not in capsys.readouterr().out
    assert (cert.read_bytes(), key.read_bytes(), stat.S_IMODE(key.stat().st_mode)) == before


def bad_tls(kind: str, d: Path) -> tuple[dict[str, str], str, Path]:
    """(web.tls settings, the YAML field the error must name, the path it must name) for a broken setup."""
    cert, key, _ = make_pair(d / "good")
    if kind == "cert missing":
        return {"cert_file": str(d / "nope" / "cert.pem"), "key_file": str(key)}, "cert_file", d / "nope" / "cert.pem"
    if kind == "key missing":
        return {"cert_file": str(cert), "key_file": str(d / "key.pem")}, "key_file", d / "key.pem"
    if kind == "key is a directory":  # unreadable even for root
        (d / "keydir").mkdir()
        return {"cert_file": str(cert), "key_file": str(d / "keydir")}, "key_file", d / "keydir"
    if kind == "key of another certificate":
        _, other_key, _ = make_pair(d / "other")
        return {"cert_file": str(cert), "key_file": str(other_key)}, "key_file", other_key
    if kind == "cert not PEM":
        junk = d / "junk.pem"
        junk.write_text("this is not a certificate\n")
        return {"cert_file": str(junk), "key_file": str(key)}, "cert_file", junk
    if kind == "key encrypted":
        _, _, k = make_pair(d / "enc")
        enc = d / "enc" / "encrypted-key.pem"
        enc.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        return {"cert_file": str(d / "enc" / "site-cert.pem"), "key_file": str(enc)}, "key_file", enc
    if kind == "key without cert":
        return {"key_file": str(key)}, "key_file", key
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "cert missing",
        "key missing",
        "key is a directory",
        "key of another certificate",
        "cert not PEM",
        "key encrypted",
        "key without cert",
    ],
)
async def test_bad_configured_certificate_stops_the_start(tmp_path, kind):
    """Checked before any part starts: nothing listens, nothing is generated, the error names the YAML path."""
    tls, field, path = bad_tls(kind, tmp_path / "etc")
    cfg = tls_site(tmp_path, {}, **tls)  # no plant: the start must stop before the controller talks to devices
    state = tmp_path / "state"
    daemon = Daemon(cfg, secrets(), state)
    try:
        with pytest.raises(ConfigError) as err:
            await asyncio.wait_for(daemon.start(), IO_TIMEOUT_S)
        assert daemon.parts == [], "parts were started before the TLS check"
    finally:
        await daemon.stop()
    line = err.value.errors[0]
    assert line.startswith(f"web.tls.{field}: ") and str(path) in line, line
    assert not (state / "tls").exists()
    await assert_port_closed(cfg.web.port)


def test_cli_refuses_a_key_it_cannot_read(tmp_path):
    """`bess-edge run` with a key file it may not read (the classic: root-owned 0600 under a service user):
    exit 2 and a line naming web.tls.key_file and the file, no traceback, nothing generated instead.
    As root, the file belongs to `nobody` and the daemon runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH."""
    cert, key, _ = make_pair(tmp_path / "etc")
    os.chmod(key, 0o600 if os.geteuid() == 0 else 0o000)
    prefix: list[str] = []
    if os.geteuid() == 0:
        os.chown(key, 65534, 65534)
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's file access override"
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    tls_site(tmp_path, {}, cert_file=str(cert), key_file=str(key))
    state = tmp_path / "state"
    env = {"PATH": os.environ["PATH"], "API_KEY": API_KEY, "HMAC_SECRET": HMAC_SECRET, "HOME": str(tmp_path)}
    res = subprocess.run(
        [
            *prefix,
            str(ROOT / ".venv" / "bin" / "bess-edge"),
            "run",
            "--config",
            str(tmp_path / "site.yaml"),
            "--state-dir",
            str(state),
            "--log-format",
            "text",
        ],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
        cwd=str(tmp_path),
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, f"rc={res.returncode}\n{out[-3000:]}"
    assert f"config: web.tls.key_file: cannot read {key}: Permission denied" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not (state / "tls").exists()
