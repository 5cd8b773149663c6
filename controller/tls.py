"""HTTPS for the dashboard/API: the configured certificate, or a self-signed one made on first start in the
state directory (so a LAN box is encrypted by default), with its SHA-256 fingerprint logged and printed."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.config import WebTls

log = logging.getLogger("bess.tls")


def fingerprint(cert_path: str | Path) -> str:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def make_self_signed(cert_path: Path, key_path: Path, hostname: str | None = None, days: int = 3650) -> None:
    hostname = hostname or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bess-edge (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    san = [x509.DNSName(hostname), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_certificate(tls: WebTls, state_dir: Path) -> tuple[str, str]:
    """The (cert, key) paths to serve: the configured ones, or a self-signed pair made once in state_dir."""
    if tls.cert_file and tls.key_file:
        return tls.cert_file, tls.key_file
    cert, key = state_dir / "tls" / "web-cert.pem", state_dir / "tls" / "web-key.pem"
    if not (cert.exists() and key.exists()):
        make_self_signed(cert, key)
        fp = fingerprint(cert)
        log.warning("generated a self-signed TLS certificate", extra={"cert": str(cert), "sha256": fp})
        print(f"HTTPS: self-signed certificate {cert}\n  SHA-256 fingerprint {fp}", flush=True)
    return str(cert), str(key)
