"""The web session key file (web/session_key.py): made 0600 on first use, the same key after, tightened when
others may read it, replaced when it holds no key."""

from __future__ import annotations

import os
import stat

from web.session_key import FILENAME, KEY_BYTES, load_session_key


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_made_once_0600_and_kept(tmp_path):
    key = load_session_key(tmp_path)
    path = tmp_path / FILENAME
    assert len(key) == KEY_BYTES and mode(path) == 0o600
    assert load_session_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temporary file left behind


def test_a_file_others_may_read_is_tightened_and_kept(tmp_path):
    key = load_session_key(tmp_path)
    path = tmp_path / FILENAME
    os.chmod(path, 0o644)
    assert load_session_key(tmp_path) == key and mode(path) == 0o600


def test_a_file_without_a_key_is_replaced(tmp_path):
    path = tmp_path / FILENAME
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    key = load_session_key(tmp_path)
    assert len(key) == KEY_BYTES and path.read_text().strip() == key.hex() and mode(path) == 0o600


def test_each_state_directory_has_its_own_key(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert load_session_key(a) != load_session_key(b)
