"""The IEC 60870-5-104 face against a real controlling station: a c104 client on loopback, a real Controller on the
real plant simulators. aFRR setpoints are followed (the PCS's setpoint moves, through every limit) and reported
spontaneously, a general interrogation returns every point, a client off the allow-list is refused, a lost
setpoint stream takes the aFRR part back to 0 with an alarm (and recovers), and commands that cannot be taken
get a negative confirmation. Bounded waits on conditions only.
"""

# no `from __future__ import annotations`: c104 checks a callback's signature against its evaluated annotations

import asyncio
import datetime as dt
import math
import re
import socket
import ssl
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator

import c104
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.config import ScadaIec104, Secrets, load_config
from controller.cycle.loop import AFRR_TIMEOUT
from controller.cycle.phases import Phase
from controller.cycle.state import PlantState
from controller.daemon import Daemon
from controller.scada.iec104 import Iec104Face
from controller.scada.iec104_points import AFRR_SETPOINT_IOA, FCR_SWITCH_IOA, MEASURED, MONITOR, POINTS
from tests.conftest import free_port
from tests.fixtures.controller import (
    device_ports,
    make_controller,
    running_controller,
    running_scada,
    site_config,
    wait_for,
)
from tests.fixtures.fcr import fcr_site_file, running_site_plant
from tests.fixtures.plant import make_plant, plant, wset_mw  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(90)

GI = c104.Cot.INTERROGATED_BY_STATION
SPONTANEOUS = c104.Cot.SPONTANEOUS
IOA = {p.name: p.ioa for p in MONITOR}


def iec104_only(port: int, **face: Any) -> dict[str, Any]:
    """Site-file overrides: only the IEC 104 face, on `port`, offering 4 MW of aFRR each way with a fast ramp."""
    return {
        "scada": {
            "modbus": {"enabled": False},
            "opcua": {"enabled": False},
            "iec104": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": port,
                "afrr_up_mw": 4.0,
                "afrr_down_mw": 4.0,
                "afrr_ramp_mw_per_min": 240.0,  # 4 MW/s: the tests see the whole ramp in a few cycles
                **face,
            },
        }
    }


class ControllingStation:
    """A c104 client (the grid operator's side): every monitored point of the map registered, each message it
    receives recorded as (ioa, value, cot, quality) (c104 calls back on its own thread: a lock guards it).

    c104 2.2.1's client has two races of its own (measured here, against this server and against a bare c104
    server alike): about one connection in four stays muted after the server confirmed STARTDT (`unmute()`
    again opens it), and about one command in a hundred is reported unconfirmed although the server confirmed
    it (its confirmation came before the client waited for it). So the station interrogates by itself after
    connecting, unmutes a connection left muted, and repeats a command that should be confirmed (an aFRR
    setpoint or a switch is idempotent); a negative confirmation is checked on the server's side as well."""

    def __init__(self, port: int, common_address: int = 1):
        self.client = c104.Client(tick_rate_ms=50, command_timeout_ms=3000)
        self.connection = self.client.add_connection(ip="127.0.0.1", port=port, init=c104.Init.NONE)
        self.station = self.connection.add_station(common_address=common_address)
        self._lock = threading.Lock()
        self._got: list[tuple[int, Any, c104.Cot, bool]] = []
        for p in MONITOR:
            pt = self.station.add_point(io_address=p.ioa, type=getattr(c104.Type, p.type))
            pt.on_receive(callable=self._on_receive)
        self.afrr = self.station.add_point(io_address=AFRR_SETPOINT_IOA, type=c104.Type.C_SE_NC_1)
        self.fcr = self.station.add_point(io_address=FCR_SWITCH_IOA, type=c104.Type.C_SC_NA_1)

    def _on_receive(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        with self._lock:
            self._got.append((point.io_address, point.value, message.cot, point.quality.is_good()))
        return c104.ResponseState.SUCCESS

    def received(self, name: str | None = None, cot: c104.Cot | None = None) -> list[tuple[Any, bool]]:
        """(value, good quality) of every message for the point `name` (all points: None) with cause `cot`."""
        with self._lock:
            got = list(self._got)
        return [
            (v, good) for ioa, v, c, good in got if (name is None or ioa == IOA[name]) and (cot is None or c == cot)
        ]

    def last(self, name: str, cot: c104.Cot | None = None) -> Any:
        got = self.received(name, cot)
        return got[-1][0] if got else None

    @property
    def is_open(self) -> bool:
        return self.connection.state == c104.ConnectionState.OPEN

    async def _command(self, point: c104.Point, value: Any, tries: int) -> bool:
        """Send a command (activation); True on a positive confirmation, up to `tries` times (see the class).
        c104 blocks until the confirmation or its command timeout: off the loop, which must keep cycling."""
        point.value = value
        for _ in range(tries):
            if await asyncio.to_thread(point.transmit, cause=c104.Cot.ACTIVATION):
                return True
        return False

    async def send_afrr(self, mw: float, tries: int = 3) -> bool:
        return await self._command(self.afrr, float(mw), tries)

    async def switch_fcr(self, on: bool, tries: int = 3) -> bool:
        return await self._command(self.fcr, on, tries)

    async def interrogate(self) -> None:
        """A general interrogation (the answers are counted by the caller; see the class for why not its result)."""
        await asyncio.to_thread(self.connection.interrogation, common_address=self.station.common_address)

    async def open(self) -> None:
        """Wait for the connection to open, unmuting one that the client left muted (bounded)."""
        for _ in range(5):
            try:
                await wait_for(lambda: self.is_open, 2, "the IEC 104 connection to open")
                return
            except AssertionError:
                if self.connection.is_connected:
                    await asyncio.to_thread(self.connection.unmute)
        await wait_for(lambda: self.is_open, 2, "the IEC 104 connection to open")


@asynccontextmanager
async def controlling_station(port: int, wait_open: bool = True) -> AsyncIterator[ControllingStation]:
    cs = ControllingStation(port)
    cs.client.start()
    try:
        if wait_open:
            await cs.open()
            await cs.interrogate()
        yield cs
    finally:
        await asyncio.to_thread(cs.client.stop)


@asynccontextmanager
async def iec104_face(c) -> AsyncIterator[Any]:
    """The controller's SCADA face with the IEC 104 part attached to the cycle, as controller/daemon.py does."""
    async with running_scada(c) as face:
        detach = c.faces.attach(Phase.AFTER_WRITE, face.iec104.on_cycle)
        try:
            yield face.iec104
        finally:
            detach()


async def test_general_interrogation_returns_every_point(plant, tmp_path):
    port = free_port()
    async with make_controller(plant, tmp_path, **iec104_only(port)) as c, iec104_face(c):
        async with controlling_station(port) as cs:
            # the station interrogated on connecting; ask once more and see every point answer with cause 20
            before = len(cs.received(cot=GI))
            await cs.interrogate()
            await wait_for(lambda: len(cs.received(cot=GI)) >= before + len(MONITOR), 5, "a full interrogation")
            state = c.faces.latest()
            for p in MONITOR:
                assert cs.received(p.name, GI), f"{p.name} (IOA {p.ioa}) missing from the interrogation"
            assert cs.last("soc_pct", GI) == pytest.approx(state.soc_pct, abs=0.2)
            assert cs.last("power_mw", GI) == pytest.approx(state.power_mw, abs=0.05)
            assert cs.last("online", GI) is True and cs.last("mode_auto", GI) is True
            assert cs.last("afrr_following", GI) is False and cs.last("fcr_on", GI) is False
            # no setpoint yet: invalid; no POI meter on this plant: the frequency is invalid too
            assert cs.received("afrr_setpoint_mw", GI)[-1][1] is False
            assert cs.received("frequency_hz", GI)[-1][1] is False
            assert cs.received("afrr_band_up_mw", GI)[-1] == (pytest.approx(4.0), True)
            # a read command (C_RD_NA_1) answers one point with cause 5 (request)
            await asyncio.to_thread(cs.station.get_point(IOA["soc_pct"]).read)
            await wait_for(lambda: cs.received("soc_pct", c104.Cot.REQUEST), 5, "the read answered")
            assert cs.last("soc_pct", c104.Cot.REQUEST) == pytest.approx(c.faces.latest().soc_pct, abs=0.2)


async def test_afrr_setpoints_are_followed_reported_and_limited(plant, tmp_path):
    port = free_port()
    overrides = iec104_only(port) | {"limits": {"grid_limit_mw": 3.0}}
    async with make_controller(plant, tmp_path, **overrides) as c, iec104_face(c) as face:
        async with controlling_station(port) as cs:
            assert await cs.send_afrr(2.5)
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(2.5), 10, "the aFRR setpoint followed")
            await wait_for(lambda: wset_mw(plant) == pytest.approx(2.5, abs=1e-3), 5, "the PCS holding 2.5 MW")
            await wait_for(
                lambda: cs.last("afrr_active_mw", SPONTANEOUS) == pytest.approx(2.5, abs=0.01),
                5,
                "the aFRR part reported spontaneously",
            )
            assert cs.last("afrr_setpoint_mw", SPONTANEOUS) == pytest.approx(2.5)
            assert cs.last("afrr_following", SPONTANEOUS) is True
            await wait_for(
                lambda: cs.last("setpoint_mw", SPONTANEOUS) == pytest.approx(2.5, abs=0.01), 5, "the setpoint"
            )

            # beyond the offered band (4 MW up): taken, clamped to 4, reported as clamped; the grid limit (3 MW)
            # still binds the setpoint: the aFRR part is a target like any other
            assert await cs.send_afrr(9.0)
            # (the cycle's decision, not the aFRR part alone: the part is stepped before the decision is made)
            await wait_for(lambda: c.decision.target_mw == pytest.approx(4.0), 10, "the clamped part ramped in")
            d = c.decision
            assert (d.binding, d.setpoint_mw, d.target_mw) == ("grid_limit", pytest.approx(3.0), pytest.approx(4.0))
            await wait_for(lambda: cs.last("afrr_clamped", SPONTANEOUS) is True, 5, "the clamp reported")
            assert cs.last("afrr_setpoint_mw", SPONTANEOUS) == pytest.approx(4.0)

            # downward, inside the band: the clamp flag goes back, the plant charges
            assert await cs.send_afrr(-1.5)
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(-1.5), 10, "charging 1.5 MW")
            await wait_for(lambda: wset_mw(plant) == pytest.approx(-1.5, abs=1e-3), 5, "the PCS charging")
            await wait_for(lambda: cs.last("afrr_clamped", SPONTANEOUS) is False, 5, "the clamp flag cleared")

            # not a number: a negative confirmation, nothing changes
            refused = face.commands_refused
            assert not await cs.send_afrr(math.nan, tries=1)
            assert face.commands_refused == refused + 1 and c.afrr.requested_mw == pytest.approx(-1.5)


async def test_a_client_off_the_allow_list_is_refused(plant, tmp_path):
    port = free_port()
    overrides = iec104_only(port, allow_clients=["10.99.0.0/16"])
    async with make_controller(plant, tmp_path, **overrides) as c, iec104_face(c) as face:
        async with controlling_station(port, wait_open=False) as cs:
            await wait_for(lambda: face.connections_refused >= 1, 10, "the connection refused")
            cycles = c.stats.cycles
            await wait_for(lambda: c.stats.cycles >= cycles + 3, 5, "three more cycles")
            assert not cs.is_open and cs.received() == []
            assert not await cs.send_afrr(1.0, tries=1)
            assert c.afrr.setpoints == 0 and c.decision.setpoint_mw == 0.0


async def test_setpoint_loss_takes_afrr_to_zero_with_an_alarm_then_recovers(plant, tmp_path):
    port = free_port()
    async with make_controller(plant, tmp_path, **iec104_only(port, afrr_timeout_s=1.0)) as c, iec104_face(c):
        async with controlling_station(port) as cs:
            assert await cs.send_afrr(2.0)
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(2.0), 10, "the setpoint followed")
            # no more setpoints: after afrr_timeout_s the part ramps back to 0 and the alarm is raised
            await wait_for(lambda: AFRR_TIMEOUT in c.alarms, 10, "the setpoint-timeout alarm")
            await wait_for(lambda: c.decision.setpoint_mw == 0.0, 10, "the aFRR part back at 0 MW")
            await wait_for(lambda: wset_mw(plant) == 0.0, 5, "the PCS back at 0 MW")
            await wait_for(lambda: cs.last("afrr_timeout", SPONTANEOUS) is True, 5, "the timeout reported")
            assert str(AFRR_TIMEOUT) == "services:afrr_setpoint_timeout" and str(AFRR_TIMEOUT) in c.active_alarms
            # the same cycle's values, sent in IOA order: 2002 came before 2003; 2006 may still be on its way
            assert cs.last("afrr_following", SPONTANEOUS) is False
            await wait_for(lambda: cs.last("alarm", SPONTANEOUS) is True, 5, "the alarm state reported")

            # setpoints resume: the alarm clears, the plant follows again
            assert await cs.send_afrr(-1.0)
            await wait_for(lambda: AFRR_TIMEOUT not in c.alarms, 5, "the alarm cleared")
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(-1.0), 10, "following again")
            await wait_for(lambda: cs.last("afrr_timeout", SPONTANEOUS) is False, 5, "the timeout cleared")


async def test_read_only_face_refuses_commands(plant, tmp_path):
    port = free_port()
    async with make_controller(plant, tmp_path, **iec104_only(port, read_only=True)) as c, iec104_face(c) as face:
        async with controlling_station(port) as cs:
            assert not await cs.send_afrr(1.0, tries=1)
            assert not await cs.switch_fcr(True, tries=1)
            assert face.commands_refused == 2 and c.afrr.setpoints == 0


def test_map_has_unique_addresses():
    ioas = [p.ioa for p in POINTS.values()]
    assert len(ioas) == len(set(ioas))
    assert all(p.deadband for p in MONITOR if p.type == MEASURED)


# ---------------------------------------------------------------------------------------------- the daemon, TLS
API_KEY = "iec104-test-key-0123456789"


def daemon_site(tmp_path: Path, plant, port: int, **face: Any):
    """The test site file for a whole Daemon: the IEC 104 face and the web API (no MQTT, Modbus or OPC UA face)."""
    overrides = iec104_only(port, **face)
    return site_config(tmp_path, device_ports(plant), mqtt={"enabled": False}, **overrides)


@asynccontextmanager
async def running_daemon(cfg, state_dir: Path) -> AsyncIterator[Daemon]:
    secrets = Secrets(
        api_keys=[API_KEY],
        hmac_secret="iec104-test-secret-0123456789abcdef",
        mqtt_url="mqtt://127.0.0.1:1",
        exchange_base_url="http://127.0.0.1:9",
    )
    daemon = Daemon(cfg, secrets, state_dir)
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


async def test_the_daemon_serves_the_face_on_its_cycle(plant, tmp_path):
    """controller/daemon.py builds the face from the site file and attaches it to the cycle: values go out
    spontaneously without a test wiring anything."""
    port = free_port()
    async with running_daemon(daemon_site(tmp_path, plant, port), tmp_path / "state") as d:
        c = d.controller
        await wait_for(lambda: c.stats.good_cycles >= 1, 10, "the first good cycle")
        async with controlling_station(port) as cs:
            assert await cs.send_afrr(1.0)
            await wait_for(
                lambda: cs.last("afrr_active_mw", SPONTANEOUS) == pytest.approx(1.0, abs=0.01), 10, "aFRR reported"
            )
            await wait_for(lambda: wset_mw(plant) == pytest.approx(1.0, abs=1e-3), 5, "the PCS at 1 MW")
        # the status API carries it too (typed: web/models.py's AfrrStatus)
        async with httpx.AsyncClient(base_url=d.web_url, timeout=5) as client:
            r = await client.get("/api/bess-status", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200, r.text
        afrr = r.json()["afrr"]
        assert afrr["setpoint_mw"] == pytest.approx(1.0) and afrr["following"] is True
        assert afrr["active_mw"] == pytest.approx(1.0) and afrr["band_up_mw"] == pytest.approx(4.0)
        assert afrr["timed_out"] is False and afrr["received"].endswith("Z")


def client_certificate(path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed client certificate (EC P-256, clientAuth) and its key, as a controlling station has."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = path / f"{name}.crt", path / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return crt, pem


STARTDT_ACT = bytes([0x68, 0x04, 0x07, 0x00, 0x00, 0x00])
STARTDT_CON = bytes([0x68, 0x04, 0x0B, 0x00, 0x00, 0x00])
# an I-frame: C_IC_NA_1 (100), one object, cause 6 (activation), common address 1, IOA 0, QOI 20 (station)
GI_ACT = bytes([0x68, 0x0E, 0, 0, 0, 0, 100, 1, 6, 0, 1, 0, 0, 0, 0, 20])


def tls_session(port: int, server_cert: Path, cert: Path, key: Path) -> bytes:
    """Over TLS with this client certificate: STARTDT, then a general interrogation; every byte the station
    sends back within a bounded read (raw IEC 104 frames: c104 2.2.1's own client cannot verify a server by
    name, so Python's ssl stands in for the controlling station's TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(server_cert))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the station's self-signed certificate, pinned
    ctx.check_hostname = False  # pinned: the certificate itself is the identity
    ctx.load_cert_chain(str(cert), str(key))
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(STARTDT_ACT)
            asked = False
            for _ in range(50):  # bounded: STARTDT con, then the interrogation's confirmation and values
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
                if got.startswith(STARTDT_CON) and not asked:
                    s.sendall(GI_ACT)
                    asked = True
                if bytes([100, 1, 10, 0]) in got:  # the interrogation's termination: all values are in
                    break
    except (TimeoutError, ssl.SSLError, OSError):
        pass  # a refused client: the handshake or the first read fails
    return got


async def test_tls_face_takes_only_the_pinned_controlling_station(plant, tmp_path):
    port = free_port()
    good_crt, good_key = client_certificate(tmp_path, "tso-station")
    other_crt, other_key = client_certificate(tmp_path, "someone-else")
    tls = {"enabled": True, "client_certs": [str(good_crt)]}
    async with make_controller(plant, tmp_path, **iec104_only(port, tls=tls)) as c, iec104_face(c):
        server_cert = c.state_dir / "tls" / "iec104-cert.pem"  # self-signed on first start
        assert server_cert.exists()
        got = await asyncio.to_thread(tls_session, port, server_cert, good_crt, good_key)
        assert got.startswith(STARTDT_CON), got[:16].hex()
        # the interrogation's activation confirmation (type 100, cause 7), measured values (type 13, any number
        # of objects, cause 20) and its termination (cause 10)
        assert bytes([100, 1, 7, 0, 1, 0]) in got and bytes([100, 1, 10, 0, 1, 0]) in got
        assert re.search(rb"\x0d.\x14\x00\x01\x00", got, re.S), got.hex()
        refused = await asyncio.to_thread(tls_session, port, server_cert, other_crt, other_key)
        assert not refused.startswith(STARTDT_CON)


# ---------------------------------------------------------------------------------------------- FCR over IEC 104
async def set_frequency(cfg, **body) -> None:
    """The meter simulator's frequency, through the simulator's control API."""
    url = f"http://127.0.0.1:{cfg.simulator.control_port}/sim/frequency"
    async with httpx.AsyncClient(timeout=5.0) as client:
        r = await client.post(url, json=body)
    assert r.status_code == 200, r.text


async def test_fcr_switch_and_afrr_stacked_on_a_plant_with_a_meter(tmp_path):
    """The FCR switch command turns FCR on and off (reported at IOA 2001); with FCR on, the frequency's part and
    the aFRR part add up in the target (through the same limits), and the aFRR band leaves FCR's band free."""
    port = free_port()
    overrides = iec104_only(port) | {"services": {"fcr": {"enabled": False, "capacity_mw": 4}}}
    cfg = load_config(fcr_site_file(tmp_path, **overrides))
    async with running_site_plant(cfg), running_controller(cfg, tmp_path / "state") as c, iec104_face(c) as face:
        await set_frequency(cfg, wander=False, hz=49.9)  # 100 mHz low: half of the 4 MW band, discharging
        async with controlling_station(port) as cs:
            assert cs.last("fcr_on", GI) is False
            await wait_for(
                lambda: cs.last("frequency_hz") == pytest.approx(49.9, abs=0.001), 5, "the frequency reported"
            )
            assert await cs.switch_fcr(True)
            await wait_for(lambda: c.fcr.enabled, 5, "FCR switched on")
            await wait_for(lambda: cs.last("fcr_on", SPONTANEOUS) is True, 5, "FCR on reported")
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(2.0, abs=0.01), 10, "FCR's 2 MW")
            # the aFRR band: 4 MW offered each way, and FCR's 4 MW held too, fit in the 10 MW limits
            assert c.afrr.band_up_mw == pytest.approx(4.0) and c.afrr.band_down_mw == pytest.approx(4.0)
            assert cs.last("afrr_band_up_mw") == pytest.approx(4.0)
            assert await cs.send_afrr(1.5)
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(3.5, abs=0.01), 10, "FCR + aFRR")
            assert c.decision.target_mw == pytest.approx(3.5, abs=0.01)
            await wait_for(lambda: cs.last("fcr_mw", SPONTANEOUS) == pytest.approx(2.0, abs=0.01), 5, "FCR reported")

            assert await cs.switch_fcr(False)
            await wait_for(lambda: not c.fcr.enabled, 5, "FCR switched off")
            await wait_for(lambda: cs.last("fcr_on", SPONTANEOUS) is False, 5, "FCR off reported")
            await wait_for(lambda: c.decision.setpoint_mw == pytest.approx(1.5, abs=0.01), 10, "aFRR alone")
        assert face.commands_refused == 0


async def test_quality_invalid_when_unknown_not_topical_while_the_plant_is_not_online(tmp_path):
    """The quality descriptor of each measured value, from the state (docs/scada-iec104.md): IV while unknown,
    NT on values measured at the plant while a device has no fresh readings, good otherwise."""
    face = Iec104Face(
        SimpleNamespace(latest=PlantState, commands=None, audit=None), ScadaIec104(port=free_port()), tmp_path
    )
    await face.start()
    try:
        quality = {p.name: face.points[p.name].quality for p in MONITOR if p.type == MEASURED}
        unknown = (
            "power_mw",
            "setpoint_mw",
            "target_mw",
            "soc_pct",
            "frequency_hz",
            "poi_power_mw",
            "afrr_setpoint_mw",
        )
        assert all(quality[n] == c104.Quality.Invalid for n in unknown)  # before the first cycle
        assert quality["afrr_active_mw"] == c104.Quality(0)  # known: no aFRR part without a setpoint
        for online in (False, True):
            face.on_cycle(PlantState(ts=1.0, soc_pct=50.0, power_mw=1.0, setpoint_mw=1.0, target_mw=1.0, online=online))
            q = {p.name: face.points[p.name].quality for p in MONITOR if p.type == MEASURED}
            assert q["soc_pct"] == (c104.Quality(0) if online else c104.Quality.NonTopical)
            assert q["power_mw"] == q["soc_pct"] and q["setpoint_mw"] == c104.Quality(0)
            assert q["frequency_hz"] == c104.Quality.Invalid  # no meter
            assert face.points["soc_pct"].value == pytest.approx(50.0)
            assert face.points["online"].value is online
    finally:
        await face.stop()


async def test_fcr_switch_on_a_site_without_fcr_changes_nothing(plant, tmp_path):
    """The command is confirmed (taken for execution), the controller refuses it (no meter, no FCR band), and the
    state the station sees stays off: IOA 2001 is the truth, not the confirmation."""
    port = free_port()
    async with make_controller(plant, tmp_path, **iec104_only(port)) as c, iec104_face(c):
        async with controlling_station(port) as cs:
            assert await cs.switch_fcr(True)
            cycles = c.stats.cycles
            await wait_for(lambda: c.stats.cycles >= cycles + 3, 5, "three more cycles")
            assert not c.fcr.enabled and cs.last("fcr_on") is False
            assert [v for v, _ in cs.received("fcr_on", SPONTANEOUS)] == []
