"""The SCADA face against real clients: a pymodbus TCP client and asyncua clients, on a real Controller polling
the real plant simulators. Status is live, only the allow-listed controls can be written (and only in range),
a manual setpoint still passes the limit function and expires, and the OPC UA security settings hold.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyAes256Sha256RsaPss, SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from controller.scada.modbus import STATUS_WORDS, ScadaModbusServer, listens_on_loopback_only
from controller.scada.opcua import NAMESPACE
from controller.scada.points import BINDING_CODES, CONTROL, MODE_CODES, NA, STATUS
from tests.conftest import free_port
from tests.fixtures.controller import make_controller, running_scada, scada_plant, wait_for
from tests.fixtures.plant import make_plant, plant  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_BUSY = 1, 2, 3, 6
POINTS = {p.name: p for p in STATUS}
CTL = {p.name: p for p in CONTROL}
MODBUS_ONLY = {"scada": {"modbus": {"enabled": True}, "opcua": {"enabled": False}}}
OPCUA_ONLY = {"scada": {"modbus": {"enabled": False}, "opcua": {"enabled": True}}}
CLIENT_URI = "urn:bess-edge:test:scada-client"


# ---------------------------------------------------------------------------------------------- Modbus helpers
@asynccontextmanager
async def modbus(c):
    cl = AsyncModbusTcpClient("127.0.0.1", port=c.config.scada.modbus.port, timeout=2, retries=0)
    try:
        assert await cl.connect(), "SCADA Modbus face does not accept a connection"
        yield cl
    finally:
        cl.close()


async def read_status(cl) -> dict[str, float | None]:
    rr = await cl.read_input_registers(0, count=STATUS_WORDS, device_id=1)
    assert not rr.isError(), rr
    out = {}
    for p in STATUS:
        regs = rr.registers[p.address : p.address + p.words]
        raw = regs[0] if p.words == 1 else regs[0] << 16 | regs[1]
        out[p.name] = None if raw == NA[p.type] else p.from_registers(regs)
    return out


def free_wildcard_port() -> int:
    """A TCP port that nothing listens on, on any interface (for a face bound to 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def exception_code(rr) -> int | None:
    return rr.exception_code if rr.isError() else None


# ---------------------------------------------------------------------------------------------- Modbus tests
async def test_modbus_serves_the_live_status(plant, tmp_path):
    async with make_controller(plant, tmp_path, **MODBUS_ONLY) as c, running_scada(c), modbus(c) as cl:
        st = await read_status(cl)
        snap, dec = c.snapshot, c.decision
        assert st["soc_pct"] == pytest.approx(snap.soc_pct, abs=0.05)
        assert st["power_mw"] == pytest.approx(snap.power_mw, abs=0.01)
        assert st["setpoint_mw"] == pytest.approx(dec.setpoint_mw, abs=0.001)
        assert st["temperature_c"] == pytest.approx(snap.temperature_max_c, abs=0.1)
        assert st["bms_allowed_discharge_mw"] == pytest.approx(snap.bms_allowed_discharge_mw, abs=0.01)
        assert st["mode"] == MODE_CODES["auto"] and st["online"] == 1 and st["alarm_bits"] == 0
        assert st["binding"] == BINDING_CODES[dec.binding]
        assert abs(st["timestamp_s"] - time.time()) < 5
        assert st["manual_setpoint_mw"] is None and st["manual_expires_s"] is None

        cycles = c.stats.cycles
        await wait_for(lambda: c.stats.cycles >= cycles + 2, 5, "two more control cycles")
        st2 = await read_status(cl)
        assert st2["heartbeat"] != st["heartbeat"], "heartbeat must change every cycle"

        # a change made through another face shows at once: the registers are the controller's latest state
        c.set_mode("stopped", source="test")
        await wait_for(lambda: c.decision.binding == "mode_stopped", 5, "a cycle in mode stopped")
        st3 = await read_status(cl)
        assert st3["mode"] == MODE_CODES["stopped"] and st3["binding"] == BINDING_CODES["mode_stopped"]
        hr = await cl.read_holding_registers(CTL["mode"].address, count=1, device_id=1)
        assert hr.registers == [MODE_CODES["stopped"]]


async def test_modbus_refuses_writes_outside_the_allow_list_and_range(plant, tmp_path):
    async with make_controller(plant, tmp_path, **MODBUS_ONLY) as c, running_scada(c) as face, modbus(c) as cl:
        sp = CTL["manual_setpoint_mw"]
        cases = [  # (what, request, expected exception code)
            ("status register 0", cl.write_register(0, 1, device_id=1), ILLEGAL_ADDRESS),
            ("below the controls", cl.write_register(99, 0, device_id=1), ILLEGAL_ADDRESS),
            ("after the controls", cl.write_register(104, 0, device_id=1), ILLEGAL_ADDRESS),
            ("far away", cl.write_register(4000, 0, device_id=1), ILLEGAL_ADDRESS),
            ("block spanning into the controls", cl.write_registers(99, [0, 0], device_id=1), ILLEGAL_ADDRESS),
            ("high word of the 32-bit setpoint", cl.write_register(sp.address, 0, device_id=1), ILLEGAL_ADDRESS),
            ("low word of the 32-bit setpoint", cl.write_register(sp.address + 1, 1000, device_id=1), ILLEGAL_ADDRESS),
            ("low word + expiry", cl.write_registers(sp.address + 1, [1000, 60], device_id=1), ILLEGAL_ADDRESS),
            ("a coil", cl.write_coil(0, True, device_id=1), ILLEGAL_ADDRESS),
            ("mode 3", cl.write_register(CTL["mode"].address, 3, device_id=1), ILLEGAL_VALUE),
            ("mode 0xFFFF", cl.write_register(CTL["mode"].address, 0xFFFF, device_id=1), ILLEGAL_VALUE),
            (
                "setpoint above p_discharge_max",
                cl.write_registers(sp.address, sp.to_registers(10.001), device_id=1),
                ILLEGAL_VALUE,
            ),
            (
                "setpoint below -p_charge_max",
                cl.write_registers(sp.address, sp.to_registers(-10.5), device_id=1),
                ILLEGAL_VALUE,
            ),
            ("expiry 0 s", cl.write_register(CTL["manual_expires_s"].address, 0, device_id=1), ILLEGAL_VALUE),
            (
                "mode 1 with an out-of-range setpoint in the same write",
                cl.write_registers(CTL["mode"].address, [1, *sp.to_registers(50.0)], device_id=1),
                ILLEGAL_VALUE,
            ),
        ]
        for what, request, code in cases:
            rr = await request
            assert exception_code(rr) == code, f"{what}: {rr}"
        # pymodbus's datastore refuses unmapped addresses and the coil before our action sees them; the rest count
        assert face.parts[0].writes_refused == 9
        assert c.mode.mode == "auto" and c.mode.source == "startup", "a refused write changed the mode"
        assert (await cl.read_holding_registers(sp.address, count=2, device_id=1)).registers == sp.to_registers(0.0)

        # the allow-listed write of a valid value is taken (positive control)
        rr = await cl.write_register(CTL["mode"].address, MODE_CODES["stopped"], device_id=1)
        assert not rr.isError(), rr
        assert c.mode.mode == "stopped" and c.mode.source == "scada-modbus"


async def test_modbus_read_only_refuses_every_write(plant, tmp_path):
    ro = {"scada": {"modbus": {"enabled": True, "read_only": True}, "opcua": {"enabled": False}}}
    async with make_controller(plant, tmp_path, **ro) as c, running_scada(c), modbus(c) as cl:
        for addr, values in (
            (CTL["mode"].address, [0]),
            (CTL["mode"].address, [2]),
            (CTL["manual_setpoint_mw"].address, [0, 1000]),
            (CTL["manual_expires_s"].address, [60]),
        ):
            rr = await cl.write_registers(addr, values, device_id=1)
            assert exception_code(rr) == ILLEGAL_ADDRESS, (addr, values, rr)
        assert c.mode.mode == "auto"
        assert (await read_status(cl))["online"] == 1, "reads still work in read-only mode"


async def test_modbus_client_allow_list(plant, tmp_path):
    listed = {"scada": {"modbus": {"enabled": True, "allow_clients": ["10.0.0.0/8"]}, "opcua": {"enabled": False}}}
    async with make_controller(plant, tmp_path, **listed) as c, running_scada(c):
        # a valid request (read 1 input register, unit 1) from 127.0.0.1, which is not on the list: closed unanswered
        reader, writer = await asyncio.open_connection("127.0.0.1", c.config.scada.modbus.port)
        try:
            writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, 1))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(256), timeout=3)
            assert data == b"", f"a client off the allow-list got an answer: {data!r}"
        except ConnectionResetError:
            pass  # closed is closed, however the kernel words it
        finally:
            writer.close()

        # the same controller behind a face that lists 127.0.0.1 answers
        cfg = c.config.scada.modbus.model_copy(update={"allow_clients": ["127.0.0.1"], "port": free_port()})
        second = ScadaModbusServer(scada_plant(c), cfg)
        await second.start()
        try:
            cl = AsyncModbusTcpClient("127.0.0.1", port=cfg.port, timeout=2, retries=0)
            assert await cl.connect()
            try:
                assert (await read_status(cl))["online"] == 1
            finally:
                cl.close()
        finally:
            await second.stop()


async def test_modbus_writes_only_from_a_listed_master(plant, tmp_path):
    """allow_clients lists 127.0.0.3: a client from 127.0.0.1 is refused, one bound to 127.0.0.3 writes."""
    listed = {"scada": {"modbus": {"enabled": True, "allow_clients": ["127.0.0.3"]}, "opcua": {"enabled": False}}}
    async with make_controller(plant, tmp_path, **listed) as c, running_scada(c):
        port = c.config.scada.modbus.port
        stranger = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        try:
            await stranger.connect()  # the kernel accepts; the face closes it before reading a request
            with pytest.raises(ModbusException):
                rr = await stranger.write_register(CTL["mode"].address, MODE_CODES["stopped"], device_id=1)
                assert rr.isError(), rr  # (never reached: no answer at all)
        finally:
            stranger.close()
        assert c.mode.mode == "auto", "a client off the allow-list changed the mode"

        master = AsyncModbusTcpClient("127.0.0.1", port=port, source_address=("127.0.0.3", 0), timeout=2, retries=0)
        try:
            assert await master.connect()
            rr = await master.write_register(CTL["mode"].address, MODE_CODES["stopped"], device_id=1)
            assert not rr.isError(), rr
        finally:
            master.close()
        assert c.mode.mode == "stopped" and c.mode.source == "scada-modbus"


async def test_modbus_denies_writes_by_default_beyond_loopback(plant, tmp_path, caplog):
    """A face bound to every interface with an empty allow_clients serves reads but refuses every write with
    exception 01, and says why. (Old code: writes were open to every client whenever the list was empty.)"""
    # a port free on every interface (free_port() checks 127.0.0.1 only; a wildcard bind clashes with any address)
    everywhere = {
        "scada": {
            "modbus": {"enabled": True, "host": "0.0.0.0", "port": free_wildcard_port()},
            "opcua": {"enabled": False},
        }
    }
    async with make_controller(plant, tmp_path, **everywhere) as c, running_scada(c) as face, modbus(c) as cl:
        assert (await read_status(cl))["online"] == 1, "reads stay open"
        sp = CTL["manual_setpoint_mw"]
        for what, request in (
            ("mode", cl.write_register(CTL["mode"].address, MODE_CODES["stopped"], device_id=1)),
            ("setpoint", cl.write_registers(sp.address, sp.to_registers(1.0), device_id=1)),
            ("a coil", cl.write_coil(0, True, device_id=1)),
        ):
            rr = await request
            assert exception_code(rr) == ILLEGAL_FUNCTION, f"{what}: {rr}"
        assert face.parts[0].writes_refused == 3
        assert c.mode.mode == "auto" and c.mode.source == "startup"
        assert (await read_status(cl))["mode"] == MODE_CODES["auto"]
        assert any("allow_clients is empty" in r.getMessage() for r in caplog.records), "the refusal is not explained"

        # the same bind with the master listed takes its writes
        cfg = c.config.scada.modbus.model_copy(update={"allow_clients": ["127.0.0.1"], "port": free_wildcard_port()})
        listed = ScadaModbusServer(scada_plant(c), cfg)
        await listed.start()
        try:
            cl2 = AsyncModbusTcpClient("127.0.0.1", port=cfg.port, timeout=2, retries=0)
            assert await cl2.connect()
            try:
                rr = await cl2.write_register(CTL["mode"].address, MODE_CODES["stopped"], device_id=1)
                assert not rr.isError(), rr
            finally:
                cl2.close()
        finally:
            await listed.stop()
        assert c.mode.mode == "stopped"


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
    ],
)
def test_which_binds_count_as_loopback_only(host, loopback):
    assert listens_on_loopback_only(host) is loopback


def storm_bound(elapsed_s: float, c) -> float:
    """Most cycles a storm of `elapsed_s` may see: the period's own rhythm plus the writes the limiter lets
    through (each accepted write may wake one cycle early), plus one at each end."""
    scada = c.config.scada
    return elapsed_s / c.config.cycle.period_s + scada.write_burst + scada.write_rate_per_s * elapsed_s + 3


async def write_storm(c, face, write: Callable[[float], Awaitable[bool]]) -> None:
    """`write(mw)` of a changing manual setpoint (True: taken, False: refused as too busy), flat out for 3 s
    (at most 5000 writes): the cycles they wake stay within storm_bound, the writes taken within the token
    bucket, and the face counts every refusal."""
    accepted = refused = 0
    cycles, t0 = c.stats.cycles, time.monotonic()
    for i in range(5000):  # a changing setpoint each time: every write that lands wakes the cycle
        if time.monotonic() - t0 > 3.0:
            break
        if await write(1.0 + (i % 2)):
            accepted += 1
        else:
            refused += 1
    elapsed_s, ran = time.monotonic() - t0, c.stats.cycles - cycles
    scada = c.config.scada
    assert 1 <= ran <= storm_bound(elapsed_s, c), f"{ran} cycles in {elapsed_s:.1f} s under {accepted + refused} writes"
    assert refused > 0 and accepted <= scada.write_burst + scada.write_rate_per_s * elapsed_s + 1, (accepted, refused)
    assert face.parts[0].writes_refused == refused


async def test_a_modbus_write_storm_keeps_the_cycle_at_its_rhythm(plant, tmp_path):
    """Old code: every accepted setpoint write woke the cycle, so a storm made the controller cycle flat out."""
    async with make_controller(plant, tmp_path, **MODBUS_ONLY) as c, running_scada(c) as face, modbus(c) as cl:
        c.set_mode("manual", 1.0, 300, source="test")
        sp = CTL["manual_setpoint_mw"]
        await wait_for(lambda: c.decision.setpoint_mw == 1.0, 5, "manual 1 MW")

        async def write(setpoint_mw: float) -> bool:
            rr = await cl.write_registers(sp.address, sp.to_registers(setpoint_mw), device_id=1)
            assert not rr.isError() or exception_code(rr) == DEVICE_BUSY, rr
            return not rr.isError()

        await write_storm(c, face, write)

        # the storm over, a write is taken again
        await wait_for(lambda: face.limiter.available() >= 1, 5, "the limiter refilled")
        rr = await cl.write_registers(sp.address, sp.to_registers(3.0), device_id=1)
        assert not rr.isError(), rr
        await wait_for(lambda: c.decision.setpoint_mw == 3.0, 5, "manual 3 MW")


async def test_manual_setpoint_over_modbus_is_limited_and_expires(plant, tmp_path):
    # a grid connection of 4 MW: an 8 MW manual setpoint is in the writable range but the limit function cuts it
    over = {**MODBUS_ONLY, "limits": {"grid_limit_mw": 4}}
    async with make_controller(plant, tmp_path, **over) as c, running_scada(c), modbus(c) as cl:
        sp, exp = CTL["manual_setpoint_mw"], CTL["manual_expires_s"]
        rr = await cl.write_registers(sp.address, sp.to_registers(8.0) + exp.to_registers(4), device_id=1)
        assert not rr.isError(), rr
        assert c.mode.mode == "auto", "the setpoint alone does not switch the mode"
        t_mode = time.time()
        rr = await cl.write_register(CTL["mode"].address, MODE_CODES["manual"], device_id=1)
        t_answered = time.time()
        assert not rr.isError(), rr
        assert c.mode.mode == "manual" and c.mode.manual_setpoint_mw == pytest.approx(8.0)

        await wait_for(
            lambda: c.decision.setpoint_mw == pytest.approx(4.0), 3, "the setpoint to reach the 4 MW grid limit"
        )
        st = await read_status(cl)
        assert st["mode"] == MODE_CODES["manual"]
        assert st["target_mw"] == pytest.approx(8.0) and st["setpoint_mw"] == pytest.approx(4.0)
        assert st["binding"] == BINDING_CODES["grid_limit"]
        assert st["manual_setpoint_mw"] == pytest.approx(8.0)
        # 4 s from when the write was taken: between sending it and its answer (whole seconds on the wire)
        assert t_mode + 4 - 1.5 <= st["manual_expires_s"] <= t_answered + 4 + 1.5, (st, t_mode, t_answered)
        # the PCS simulator follows: its measured power (read back over SunSpec) reaches 4 MW, never more
        await wait_for(lambda: c.snapshot.power_mw is not None and c.snapshot.power_mw > 3.9, 3, "the PCS at 4 MW")
        assert c.snapshot.power_mw <= 4.0 + 0.01

        # no renewal: back to auto (schedule empty: 0 MW) when the 4 s run out
        await wait_for(lambda: c.mode.mode == "auto", 6, "the manual setpoint to expire")
        assert time.time() - t_mode >= 4 - 0.05, "expired early"  # late is bounded by the wait above, not timed here
        assert c.mode.source == "expiry"
        await wait_for(lambda: c.decision.setpoint_mw == 0.0, 3, "the setpoint back at 0 MW")
        st = await read_status(cl)
        assert st["mode"] == MODE_CODES["auto"] and st["manual_setpoint_mw"] is None and st["setpoint_mw"] == 0.0


# ---------------------------------------------------------------------------------------------- OPC UA
def url(c) -> str:
    return f"opc.tcp://127.0.0.1:{c.config.scada.opcua.port}/bess-edge/scada"


@asynccontextmanager
async def opcua(
    c,
    user: str | None = None,
    password: str = "demo",
    policy=None,
    cert_dir: Path | None = None,
    mode=ua.MessageSecurityMode.SignAndEncrypt,
):
    cl = Client(url(c), timeout=5)
    if user:
        cl.set_user(user)
        cl.set_password(password)
    if policy is not None:
        cl.application_uri = CLIENT_URI
        await cl.set_security(
            policy,
            str(cert_dir / "client-cert.der"),
            str(cert_dir / "client-key.pem"),
            server_certificate=str(c.state_dir / "scada-opcua" / "server-cert.der"),
            mode=mode,
        )
    async with cl:
        cl.ns = await cl.get_namespace_index(NAMESPACE)
        yield cl


def node(cl, name: str):
    return cl.get_node(f"ns={cl.ns};s={name}")


async def make_client_cert(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    await setup_self_signed_certificate(
        folder / "client-key.pem",
        folder / "client-cert.der",
        CLIENT_URI,
        "localhost",
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "bess-edge test SCADA client"},
    )
    return folder


def u16(v: int) -> ua.Variant:
    return ua.Variant(v, ua.VariantType.UInt16)


def mw(v: float) -> ua.Variant:
    return ua.Variant(v, ua.VariantType.Double)


async def test_opcua_roles_and_checked_writes(plant, tmp_path):
    # the lab setting (None policy allowed) keeps the test to one server start; the roles hold on every channel
    lab = {"scada": {"modbus": {"enabled": False}, "opcua": {"enabled": True, "allow_none_security": True}}}
    async with make_controller(plant, tmp_path, **lab) as c, running_scada(c):
        with pytest.raises(ua.uaerrors.BadIdentityTokenRejected):
            async with opcua(c):
                pass
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            async with opcua(c, "operator", password="wrong"):
                pass

        async with opcua(c, "viewer") as cl:
            await wait_for(lambda: c.snapshot is not None, 2, "a snapshot")
            soc = await node(cl, "Status.soc_pct").read_value()
            assert soc == pytest.approx(c.snapshot.soc_pct, abs=0.5)
            assert await node(cl, "Status.mode").read_value() == MODE_CODES["auto"]
            units = await node(cl, "Status.power_mw").get_child(["0:EngineeringUnits"])
            assert (await units.read_value()).DisplayName.Text == "MW"
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await node(cl, "Controls.mode").write_value(u16(MODE_CODES["stopped"]))
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await node(cl, "Status.soc_pct").write_value(mw(10.0))
        assert c.mode.mode == "auto" and c.mode.source == "startup"

        async with opcua(c, "operator") as cl:
            # status is read-only for everyone (asyncua answers a non-writable node with BadUserAccessDenied)
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await node(cl, "Status.soc_pct").write_value(mw(10.0))
            with pytest.raises(ua.uaerrors.BadOutOfRange):
                await node(cl, "Controls.manual_setpoint_mw").write_value(mw(10.5))
            with pytest.raises(ua.uaerrors.BadOutOfRange):
                await node(cl, "Controls.mode").write_value(u16(3))
            with pytest.raises(ua.uaerrors.BadOutOfRange):
                await node(cl, "Controls.manual_expires_s").write_value(u16(0))
            assert c.mode.mode == "auto" and c.mode.source == "startup"

            await node(cl, "Controls.manual_setpoint_mw").write_value(mw(-2.0))
            await node(cl, "Controls.manual_expires_s").write_value(u16(120))
            await node(cl, "Controls.mode").write_value(u16(MODE_CODES["manual"]))
            assert c.mode.mode == "manual" and c.mode.manual_setpoint_mw == -2.0 and c.mode.source == "scada-opcua"
            assert c.mode.manual_expires_ts == pytest.approx(time.time() + 120, abs=2)
            await wait_for(lambda: c.decision.setpoint_mw == -2.0, 3, "the -2 MW manual setpoint")
            status_mode, status_sp = node(cl, "Status.mode"), node(cl, "Status.setpoint_mw")

            async def shows_manual() -> bool:
                return await status_mode.read_value() == 1 and await status_sp.read_value() == pytest.approx(-2.0)

            for _ in range(40):  # the Status folder follows within a few update periods
                if await shows_manual():
                    break
                await asyncio.sleep(0.1)
            assert await shows_manual()
            await node(cl, "Controls.mode").write_value(u16(MODE_CODES["auto"]))
            assert c.mode.mode == "auto"


async def test_opcua_secure_policies_trust_store_and_no_none(plant, tmp_path, monkeypatch):
    trusted_certs = await make_client_cert(tmp_path / "client")
    stranger = await make_client_cert(tmp_path / "stranger")
    secure = {"scada": {"modbus": {"enabled": False}, "opcua": {"enabled": True, "allow_none_security": False}}}
    async with make_controller(plant, tmp_path, **secure) as c:
        trust_dir = c.state_dir / "scada-opcua" / "trusted"
        trust_dir.mkdir(parents=True)
        shutil.copy(trusted_certs / "client-cert.der", trust_dir / "test-client.der")
        async with running_scada(c):
            async with opcua(c, "operator", policy=SecurityPolicyBasic256Sha256, cert_dir=trusted_certs) as cl:
                assert await node(cl, "Status.online").read_value() == 1
                await node(cl, "Controls.mode").write_value(u16(MODE_CODES["stopped"]))
                assert c.mode.mode == "stopped"
            async with opcua(
                c,
                "viewer",
                policy=SecurityPolicyAes256Sha256RsaPss,
                cert_dir=trusted_certs,
                mode=ua.MessageSecurityMode.Sign,
            ) as cl:
                assert await node(cl, "Status.mode").read_value() is not None

            # a certificate that is not in the trust store
            with pytest.raises(ua.UaError):
                async with opcua(c, "operator", policy=SecurityPolicyBasic256Sha256, cert_dir=stranger):
                    pass

            # the server offers no None endpoint ...
            probe = Client(url(c), timeout=5)
            endpoints = await probe.connect_and_get_server_endpoints()
            assert endpoints and all(e.SecurityMode != ua.MessageSecurityMode.None_ for e in endpoints)
            assert all(e.SecurityPolicyUri.endswith(("#Basic256Sha256", "#Aes256_Sha256_RsaPss")) for e in endpoints)
            with pytest.raises(ua.UaError):  # ... so a well-behaved None client gives up
                async with opcua(c, "operator"):
                    pass
            # ... and a client that ignores the endpoint list and logs in over a None channel anyway is refused
            monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda endpoints, mode, uri: endpoints[0]))
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                async with opcua(c, "operator") as cl:
                    await node(cl, "Controls.mode").write_value(u16(MODE_CODES["auto"]))
            assert c.mode.mode == "stopped"


async def test_an_opcua_write_storm_keeps_the_cycle_at_its_rhythm(plant, tmp_path):
    lab = {"scada": {"modbus": {"enabled": False}, "opcua": {"enabled": True, "allow_none_security": True}}}
    async with make_controller(plant, tmp_path, **lab) as c, running_scada(c) as face, opcua(c, "operator") as cl:
        c.set_mode("manual", 1.0, 300, source="test")
        await wait_for(lambda: c.decision.setpoint_mw == 1.0, 5, "manual 1 MW")
        setpoint = node(cl, "Controls.manual_setpoint_mw")

        async def write(setpoint_mw: float) -> bool:
            try:
                await setpoint.write_value(mw(setpoint_mw))
                return True
            except ua.uaerrors.BadServerTooBusy:
                return False

        await write_storm(c, face, write)
