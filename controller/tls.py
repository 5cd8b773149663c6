"""HTTPS for the dashboard/API: the configured certificate, or a self-signed one made on first start in the
state directory (so a LAN box is encrypted by default), with its SHA-256 fingerprint logged and printed."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.config import ConfigError, WebTls

log = logging.getLogger("bess.tls")

GENERATED_DIR = "tls"
GENERATED_CERT = "web-cert.pem"
GENERATED_KEY = "web-key.pem"
RENEW_BEFORE = dt.timedelta(days=30)


def fingerprint(cert_path: str | Path) -> str:
    """SHA-256 of the certificate's DER, as browsers and `openssl x509 -fingerprint -sha256` show it."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def host_names(bind_host: str | None = None) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a self-signed certificate for this host claims: its host name and FQDN,
    localhost, the loopback addresses, and the address the web server binds when that is a specific one."""
    dns = [n for n in dict.fromkeys([socket.gethostname(), socket.getfqdn(), "localhost"]) if n]
    ips = ["127.0.0.1", "::1"]
    if bind_host:
        try:
            ip = ipaddress.ip_address(bind_host)
        except ValueError:  # a name: claim it too
            if bind_host not in dns:
                dns.append(bind_host)
        else:
            if not ip.is_unspecified and str(ip) not in ips:
                ips.append(str(ip))
    return dns, ips


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write a file atomically (a crash leaves the old file or the new one, never half of one) with `mode`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def make_self_signed(
    cert_path: Path, key_path: Path, hostname: str | None = None, days: int = 3650, bind_host: str | None = None
) -> None:
    """A P-256 key (0600) and a self-signed server certificate for this host (see host_names)."""
    dns, ips = host_names(bind_host)
    if hostname and hostname not in dns:
        dns.insert(0, hostname)
    common_name = hostname or dns[0]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bess-edge (self-signed)"),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc)
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    for d in {key_path.parent, cert_path.parent}:
        d.mkdir(parents=True, exist_ok=True)
    # key first: a crash between the two leaves a key without a certificate, which the next start replaces
    _write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _no_passphrase() -> bytes:
    # without a callback OpenSSL would prompt on the terminal for an encrypted key: a daemon has none
    raise ValueError("the key is encrypted")


def check_pair(cert: str | Path, key: str | Path | None) -> None:
    """Load the pair the way the web server will; raises ssl.SSLError / OSError / ValueError if it cannot."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key) if key else None, password=_no_passphrase)


def _configured(tls: WebTls) -> tuple[str, str | None]:
    """The configured pair, checked now so that a bad one stops the start with the YAML path to fix."""
    if tls.key_file and not tls.cert_file:
        raise ConfigError(
            "web.tls",
            [
                f"web.tls.key_file: given ({tls.key_file}) without web.tls.cert_file; "
                "give both, or neither for a self-signed certificate"
            ],
        )
    cert, key = tls.cert_file, tls.key_file
    for field, path in (("cert_file", cert), ("key_file", key)):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise ConfigError("web.tls", [f"web.tls.{field}: cannot read {path}: {e.strerror or e}"]) from None
    try:
        x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except ValueError as e:
        raise ConfigError("web.tls", [f"web.tls.cert_file: {cert} is not a PEM certificate ({e})"]) from None
    try:
        check_pair(cert, key)
    except ValueError:  # from _no_passphrase
        where = "key_file" if key else "cert_file"
        raise ConfigError(
            "web.tls",
            [
                f"web.tls.{where}: the private key in {key or cert} is encrypted; "
                "the daemon needs an unencrypted key readable only by its user"
            ],
        ) from None
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or str(e)
        where = "key_file" if key else "cert_file"
        raise ConfigError(
            "web.tls",
            [f"web.tls.{where}: {key or cert} is not a usable private key for web.tls.cert_file {cert} ({reason})"],
        ) from None
    return cert, key


def _usable_generated(cert: Path, key: Path) -> str | None:
    """Why the generated pair in the state directory cannot be served any more, or None if it can."""
    if not (cert.exists() and key.exists()):
        return "missing"
    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        check_pair(cert, key)
    except (ValueError, ssl.SSLError, OSError) as e:
        return f"unusable ({e})"
    if c.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE:
        return f"expires {c.not_valid_after_utc.isoformat()}"
    return None


def ensure_certificate(tls: WebTls, state_dir: Path, bind_host: str | None = None) -> tuple[str, str | None]:
    """The (cert, key) paths to serve: the configured ones as they are (checked, ConfigError naming the YAML
    path if they cannot be served), or a self-signed pair made once in state_dir/tls and reused after."""
    if tls.cert_file or tls.key_file:
        cert_s, key_s = _configured(tls)
        log.info("HTTPS with the configured certificate", extra={"cert": cert_s, "sha256": fingerprint(cert_s)})
        return cert_s, key_s
    tls_dir = Path(state_dir) / GENERATED_DIR
    cert, key = tls_dir / GENERATED_CERT, tls_dir / GENERATED_KEY
    why = _usable_generated(cert, key)
    if why is not None:
        if why != "missing":
            log.warning(
                "replacing the self-signed TLS certificate: clients that pinned it must pin the new one",
                extra={"cert": str(cert), "reason": why},
            )
        tls_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(tls_dir, 0o700)
        make_self_signed(cert, key, bind_host=bind_host)
        fp = fingerprint(cert)
        log.warning("generated a self-signed TLS certificate", extra={"cert": str(cert), "sha256": fp})
        print(f"HTTPS: generated a self-signed certificate {cert}\n  SHA-256 fingerprint {fp}", flush=True)
        return str(cert), str(key)
    if key.stat().st_mode & 0o077:  # someone loosened it: the key is only the daemon's
        log.warning("the self-signed key was readable by others: made it 0600", extra={"key": str(key)})
        os.chmod(key, 0o600)
    log.info("HTTPS with the self-signed certificate", extra={"cert": str(cert), "sha256": fingerprint(cert)})
    return str(cert), str(key)
