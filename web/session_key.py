"""The key that signs dashboard sessions and websocket tokens: random, made on the daemon's first start, kept in
its state directory (mode 0600) so that sessions survive a restart. One secret, one purpose: it is never
HMAC_SECRET (which signs trades and exchange requests), so knowing one says nothing about the other.

Delete the file to end every session (the daemon makes a new one on its next start).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("bess.web")

FILENAME = "web-session.key"
KEY_BYTES = 32


def load_session_key(state_dir: str | Path) -> bytes:
    """The state directory's session key, made (0600, written whole or not at all) if there is none. A file
    another user may read is tightened to 0600; a file that does not hold a key is replaced (which only ends
    the sessions it signed)."""
    path = Path(state_dir) / FILENAME
    try:
        key = _read(path)
    except FileNotFoundError:
        key = None
    if key is None:
        return _create(path)
    return key


def _read(path: Path) -> bytes | None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("session key file readable by others: set to 0600", extra={"path": str(path), "mode": oct(mode)})
        os.chmod(path, 0o600)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        log.warning(
            "session key file does not hold a key: making a new one (dashboard sessions end)", extra={"path": str(path)}
        )
        return None
    return key


def _create(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 from the start, never wider
    try:
        os.fchmod(fd, 0o600)  # an existing tmp file kept its old mode through O_CREAT
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    log.info("made a new web session key", extra={"path": str(path)})
    return key
