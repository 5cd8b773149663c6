"""The site configuration: one YAML file validated into typed models, plus secrets from the environment.

A bad file fails at start with the YAML path (and line) of every error, e.g.
`limits.soc_max_pct (line 31): must be > limits.soc_min_pct (got 10 <= 20)`.

Strict on purpose: a NaN or an infinity in a limit silently switches that limit off (every comparison with
NaN is false), so every number must be finite, within a range a plant can have, and consistent with the
numbers it relates to (SoC window, temperature order, staleness against the cycle, the PCS's reversion
timer). Risks a site accepts on purpose (no reversion point on the PCS, plain-text transport in production)
must be spelled out in the site file and are warned about on every start.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from drivers.errors import ProfileError
from drivers.profile import Profile, format_validation_error, load_profile

DEMO_API_KEY = "demo"
DEMO_HMAC_SECRET = "phoenyra_demo_secret"


class ConfigError(Exception):
    """A configuration that cannot run; `errors` holds one line per problem, each led by its YAML path."""

    def __init__(self, source: str, errors: list[str]):
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))
        self.source = source
        self.errors = errors


# temperatures a site file may name, °C (a battery limit outside this is a typo, not a plant)
T_MIN_C, T_MAX_C = -50.0, 100.0
# PCS reversion timer: at least 1 s (a PCS takes whole seconds), at most a few minutes (the plant must not
# hold a setpoint that long after the controller died)
REVERSION_MIN_S, REVERSION_MAX_S = 1.0, 300.0
# aFRR: full activation is due within 5 minutes of a setpoint (the product's rule, ENTSO-E PICASSO)
AFRR_FULL_ACTIVATION_S = 300.0
STALE_MAX_S = 60.0
# controller/cycle/devices.py: a device is stale after this many poll periods without a good read
POLL_PERIODS_STALE = 3
USER_ROLES = ("viewer", "operator")  # controller/scada/opcua.py ROLES
# Alarm keys are "<device>:<alarm>" (controller/cycle/alarms.py); these device parts are the controller's own, so a
# device of that name would have its alarms taken for theirs (and a ':' in a name would split its keys wrongly)
RESERVED_DEVICE_NAMES = {
    "controller": "the controller's own alarms ('controller:cycle_error')",
    "schedule": "the schedule's alarms ('schedule:infeasible')",
    "trading": "the auto-trader's alarms ('trading:exchange_down')",
    "services": "the grid services' alarms ('services:fcr_reserve')",
    "pcs_readback": "the read-back alarms of every PCS ('pcs_readback:<pcs>')",
}
_SCRYPT_HASH = re.compile(r"^scrypt\$(?:[0-9a-f]{2})+\$[0-9a-f]{128}$")  # scada_opcua.hash_password


class _Model(BaseModel):
    # allow_inf_nan=False: `.nan` / `.inf` in YAML are floats, and a NaN limit compares false to everything
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Site(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="site id, used in MQTT topics")
    name: str = ""
    timezone: str = "UTC"


class Device(_Model):
    """One device on the plant LAN."""

    role: Literal["bms", "pcs", "meter"]
    unit: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="the unit (in units:) this PCS or BMS belongs to; none for a meter",
    )
    protocol: Literal["modbus", "sunspec", "opcua"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    connections: int = Field(
        1,
        ge=1,
        le=16,
        description="Modbus/SunSpec: how many connections the devices at this host:port (a gateway) share, each "
        "device on the one its unit id falls to (unit id modulo this): a gateway that takes several connections "
        "answers their requests side by side. Every device at one host:port gives the same number",
    )
    profile: str = Field(description="profile file, relative to the config file's folder")
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    timeout_s: float = Field(0.5, gt=0, le=30)
    endpoint_path: str = Field("", description="OPC UA endpoint path after host:port")
    subscribe: bool = Field(True, description="OPC UA: read by subscription, polling as fallback")
    reversion_timeout_s: float = Field(
        10.0, ge=REVERSION_MIN_S, le=REVERSION_MAX_S, description="PCS: falls back to 0 MW after this"
    )
    allow_no_reversion: bool = Field(False, description="PCS: accept a profile without reversion points (warned)")
    username: str | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.endpoint_path}"


class Unit(_Model):
    """One unit of the plant: a PCS and the battery behind it (its BMS)."""

    rated_mw: float = Field(gt=0, le=10_000, description="the PCS's rating, both directions")
    capacity_mwh: float = Field(gt=0, le=100_000, description="the battery's usable energy")


@dataclass(frozen=True)
class UnitPlan:
    """A unit as the rest of the code sees it (SiteConfig.unit_plan): its PCS and BMS by name, rating, capacity."""

    unit: str
    pcs_name: str
    pcs: Device
    bms_name: str
    bms: Device
    rated_mw: float
    capacity_mwh: float


IMPLICIT_UNIT = "u1"  # the name of the one unit of a site file without units:


# limit -> (the limit it is ordered against, True: must be above it, False: below); the other one comes first
_LIMIT_ORDER = {
    "soc_max_pct": ("soc_min_pct", True),
    "t_max_c": ("t_derate_c", True),
    "t_min_charge_c": ("t_derate_c", False),
}


class Limits(_Model):
    """Operating limits; every setpoint passes all of them, the strictest wins."""

    p_charge_max_mw: float = Field(gt=0)
    p_discharge_max_mw: float = Field(gt=0)
    soc_min_pct: float = Field(ge=0, le=100)
    soc_max_pct: float = Field(ge=0, le=100)
    soc_taper_band_pct: float = Field(5.0, ge=0, le=50)
    t_derate_c: float = Field(45.0, ge=T_MIN_C, le=T_MAX_C)
    t_max_c: float = Field(55.0, ge=T_MIN_C, le=T_MAX_C)
    t_min_charge_c: float = Field(0.0, ge=T_MIN_C, le=T_MAX_C)
    ramp_mw_per_s: float = Field(5.0, gt=0)
    grid_limit_mw: float = Field(gt=0)
    poi_fallback_margin_mw: float = Field(
        0.5,
        ge=0,
        description="POI meter lost: the grid limit less this applies to the plant setpoint (open loop), "
        "covering the aux loads and losses the meter no longer shows",
    )
    stale_after_s: float = Field(3.0, gt=0, le=STALE_MAX_S)

    @field_validator(*_LIMIT_ORDER)
    @classmethod
    def _order(cls, v: float, info: ValidationInfo) -> float:
        """A limit on the right side of the one it is ordered against (_LIMIT_ORDER), which comes before it."""
        other, above = _LIMIT_ORDER[info.field_name]
        bound = info.data.get(other)
        if bound is not None and (v <= bound if above else v >= bound):
            want, got = (">", "<=") if above else ("<", ">=")
            raise ValueError(f"must be {want} limits.{other} (got {v:g} {got} {bound:g})")
        return v

    @field_validator("poi_fallback_margin_mw")
    @classmethod
    def _margin(cls, v: float, info: ValidationInfo) -> float:
        grid = info.data.get("grid_limit_mw")
        if grid is not None and v >= grid:
            raise ValueError(
                f"must be < limits.grid_limit_mw (got {v:g} >= {grid:g}): the open loop would allow no power at all"
            )
        return v

    @field_validator("soc_taper_band_pct")
    @classmethod
    def _band(cls, v: float, info: ValidationInfo) -> float:
        lo, hi = info.data.get("soc_min_pct"), info.data.get("soc_max_pct")
        if lo is not None and hi is not None and 2 * v > hi - lo:
            raise ValueError(f"must be <= half the SoC window (got {v:g} > {(hi - lo) / 2:g})")
        return v


class Battery(_Model):
    """The battery as the schedule's feasibility check and the simulator see it."""

    capacity_mwh: float = Field(gt=0)
    charge_efficiency: float = Field(0.95, gt=0, le=1)
    discharge_efficiency: float = Field(0.95, gt=0, le=1)
    self_discharge_pct_per_day: float = Field(0.5, ge=0, le=100)
    aux_load_mw: float = Field(0.0, ge=0)

    @property
    def round_trip_efficiency(self) -> float:
        return self.charge_efficiency * self.discharge_efficiency


class Cycle(_Model):
    period_s: float = Field(1.0, ge=0.1, le=10)
    manual_timeout_s: float = Field(300.0, gt=0, le=86400)
    decision_retention_days: float = Field(30.0, gt=0, le=3650)


class Tls(_Model):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class Mqtt(_Model):
    enabled: bool = True
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(86400, ge=0, le=0xFFFFFFFF)  # MQTT 5: a four-byte integer
    telemetry_interval_s: float = Field(1.0, ge=0.1, le=3600)
    outbox_max_rows: int = Field(1_000_000, ge=100, le=100_000_000)
    outbox_max_age_s: float = Field(7 * 86400, gt=0, le=366 * 86400)
    drain_rate_per_s: float = Field(50_000, gt=0)  # backlog drain cap; the cycle keeps its rhythm either way
    reconnect_max_s: float = Field(30, gt=0, le=3600)
    tls: Tls | None = None


class WebTls(_Model):
    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None


class Web(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    tls: WebTls = WebTls()
    lockout_failures: int = Field(10, ge=1)
    lockout_s: float = Field(300, gt=0)
    # bounds a client cannot grow past (web/server.py, web/app.py): memory and file descriptors stay bounded
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=64 * 1_048_576, description="request body limit, counted as it streams (413 past it)"
    )
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576, description="request line + headers (431 past it)")
    max_connections: int = Field(256, ge=4, le=10_000, description="open connections, websockets included")
    max_connections_per_client: int = Field(64, ge=1, le=10_000, description="open HTTP connections per client IP")
    header_timeout_s: float = Field(10.0, gt=0, le=300, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request's body must arrive within this")
    keep_alive_s: float = Field(5.0, gt=0, le=300, description="an idle keep-alive connection is closed after this")
    open_metrics: bool = Field(False, description="serve /metrics without a key")
    open_docs: bool = Field(False, description="serve /docs and /openapi.json without a key")


# each SCADA face's cap on open connections (controller/scada/connections.py)
ScadaConnections = Annotated[
    int, Field(ge=1, le=128, description="open connections to this face; a client past it is closed at once")
]


class ScadaModbus(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(5020, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    read_only: bool = False
    max_connections: ScadaConnections = 16
    allow_clients: list[str] = Field(
        default_factory=list,
        description=(
            "IP addresses or networks of the SCADA masters that may connect (read and write); empty: anyone may "
            "read, and writes are taken only when the face listens on loopback only"
        ),
    )

    @field_validator("allow_clients")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"must be IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24 (got {item!r})")
        return v


class ScadaOpcUa(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(4840, ge=1, le=65535)
    read_only: bool = False
    allow_none_security: bool = False
    users_file: str | None = None
    max_connections: ScadaConnections = 16


def _is_loopback_host(host: str) -> bool:
    """A literal loopback address or `localhost` (the config check does not resolve names)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ScadaIec104Tls(_Model):
    """TLS for the IEC 104 face (IEC 62351-3 style: the server's certificate, and the controlling station's
    certificate pinned or issued by a configured CA)."""

    enabled: bool = Field(False, description="TLS on the face (plain TCP otherwise)")
    cert_file: str | None = Field(
        None, description="server certificate (PEM); none: a self-signed one in the state dir"
    )
    key_file: str | None = Field(None, description="its private key (PEM)")
    ca_file: str | None = Field(None, description="CA that issued the controlling station's certificate")
    client_certs: list[str] = Field(
        default_factory=list, description="the controlling station's certificates (PEM), pinned: only these connect"
    )


class ScadaIec104(_Model):
    """The IEC 60870-5-104 face (controller/scada/iec104.py, docs/scada-iec104.md): the plant as the controlled
    station; the grid operator's aFRR setpoints and FCR on/off in, measured values out."""

    enabled: bool = Field(False, description="serve the face")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(2404, ge=1, le=65535, description="TCP port (2404: the IEC 104 port)")
    common_address: int = Field(1, ge=1, le=65534, description="the station's ASDU address")
    read_only: bool = Field(False, description="refuse every command (negative confirmation)")
    max_connections: ScadaConnections = 16
    allow_clients: list[str] = Field(
        default_factory=list,
        description=(
            "IP addresses or networks of the controlling stations; every other client is refused on connect. "
            "Empty: only a face that listens on loopback takes clients (its local ones)"
        ),
    )
    tls: ScadaIec104Tls = ScadaIec104Tls()
    afrr_up_mw: float = Field(0.0, ge=0, le=10_000, description="offered aFRR band upward (discharge)")
    afrr_down_mw: float = Field(0.0, ge=0, le=10_000, description="offered aFRR band downward (charge)")
    afrr_ramp_mw_per_min: float | None = Field(
        None, gt=0, le=600_000, description="aFRR ramp; none: the larger band over 5 minutes"
    )
    afrr_timeout_s: float = Field(30.0, ge=1, le=3600, description="no setpoint this long: aFRR part to 0, alarm")
    deadband_mw: float = Field(0.01, ge=0, le=1000, description="a MW value is sent spontaneously past this change")
    deadband_hz: float = Field(0.001, ge=0, le=1, description="frequency: sent spontaneously past this change")
    deadband_pct: float = Field(0.1, ge=0, le=100, description="SoC: sent spontaneously past this change")

    @field_validator("allow_clients")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return ScadaModbus._networks(v)

    @property
    def afrr_ramp_mw_per_s(self) -> float:
        """The aFRR ramp in MW/s (the configured one, or full activation of the larger band in 5 minutes)."""
        if self.afrr_ramp_mw_per_min is not None:
            return self.afrr_ramp_mw_per_min / 60.0
        return max(self.afrr_up_mw, self.afrr_down_mw) / AFRR_FULL_ACTIVATION_S


class Scada(_Model):
    modbus: ScadaModbus = ScadaModbus()
    opcua: ScadaOpcUa = ScadaOpcUa()
    iec104: ScadaIec104 = ScadaIec104()
    # mode/setpoint writes over both faces together (each one wakes the control cycle): a write storm is refused
    # past this rate, so it cannot make the controller cycle flat out
    write_rate_per_s: float = Field(1.0, gt=0, le=100, description="sustained mode/setpoint writes per second")
    write_burst: int = Field(5, ge=1, le=100, description="mode/setpoint writes accepted back to back")


class Exchange(_Model):
    market: str = "intraday"
    timeout_s: float = Field(5.0, gt=0, le=120)
    cache_s: float = Field(2.0, ge=0, le=3600)
    # the exchange's X-Timestamp window (DESIGN.md: 30 s): a request it has not taken within that window (plus
    # clock skew) never will be, so an unanswered order is settled as not placed after 2 windows and a margin
    request_window_s: float = Field(30.0, gt=0, le=300)


class TradingAuto(_Model):
    """The auto-trader (trading.auto:): every `replan_s` and after every fill it re-plans against the price
    forecast, and the difference between plan and position becomes orders within these risk limits, each through
    the same pre-trade check as a manual order. Off unless the site file turns it on."""

    enabled: bool = False
    replan_s: float = Field(60.0, ge=1, le=3600, description="re-plan this often (and after every fill)")
    min_margin_eur_mwh: float = Field(
        1.0, ge=0, le=1000, description="sell at least this above the forecast price, buy at least this below"
    )
    max_order_mw: float = Field(5.0, gt=0, le=10_000, description="largest single order")
    max_position_mw: float = Field(10.0, gt=0, le=10_000, description="largest net position of any period")
    min_order_mw: float = Field(0.1, ge=0.1, le=10_000, description="a smaller difference is left alone")
    trade_ahead_h: float = Field(4.0, gt=0, le=48, description="orders only for periods starting within this")
    reprice_eur_mwh: float = Field(
        2.0, ge=0, le=1000, description="an open order priced further than this from its new price is replaced"
    )

    @model_validator(mode="after")
    def _order_within_position(self) -> "TradingAuto":
        if self.max_order_mw > self.max_position_mw:
            raise ValueError(
                f"max_order_mw: must be <= trading.auto.max_position_mw (got {self.max_order_mw:g} > "
                f"{self.max_position_mw:g})"
            )
        if self.min_order_mw > self.max_order_mw:
            raise ValueError(
                f"min_order_mw: must be <= trading.auto.max_order_mw (got {self.min_order_mw:g} > "
                f"{self.max_order_mw:g})"
            )
        return self


class Trading(_Model):
    """Trading on the site's own account (trading:): the auto-trader, and what the optimiser
    (controller/trading/optimiser.py) plans with."""

    auto: TradingAuto = TradingAuto()
    # wear per MWh through the plant (charge plus discharge): a cell pack of ~100 kEUR/MWh good for ~6,000 full
    # cycles (12,000 MWh of throughput per MWh) costs ~8 EUR/MWh; it keeps the plan off spreads smaller than that
    degradation_eur_mwh: float = Field(8.0, ge=0, le=10_000, description="cost of battery wear per MWh of throughput")


class Forecast(_Model):
    """The prices the auto-trader plans against (forecast:): known results where published, else a similar-day
    model over the stored market history, blended toward the live order book for the near periods. `source`:
    exchange (its day-ahead auction results), csv (`path`: rows of period_start,price_eur_mwh) or http (`url`
    answering GET with {periods: [{period_start, price_eur_mwh}]}, the exchange's auction shape)."""

    source: Literal["exchange", "csv", "http"] = "exchange"
    path: str | None = Field(None, description="csv: the file, relative to the site file's folder")
    url: str | None = Field(None, max_length=2048, description="http: the forecast's URL (http or https)")
    horizon_h: float = Field(36.0, ge=1, le=168)
    refresh_s: float = Field(60.0, ge=1, le=86400, description="the source is read this often")
    history_days: int = Field(14, ge=1, le=90, description="market history the similar-day model reads")
    near_blend_h: float = Field(2.0, ge=0, le=48, description="periods this close blend toward the order book")
    sample_s: float = Field(15.0, ge=1, le=3600, description="the market's mark/EMA/VWAP is stored this often")
    timeout_s: float = Field(5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _source_needs(self) -> "Forecast":
        if self.source == "csv" and not self.path:
            raise ValueError("path: required when forecast.source is csv (a file of period_start,price_eur_mwh)")
        if self.source == "http":
            if not self.url:
                raise ValueError("url: required when forecast.source is http")
            scheme = urlparse(self.url).scheme
            if scheme not in ("http", "https") or not urlparse(self.url).hostname:
                raise ValueError(f"url: must be an http:// or https:// URL with a host (got {self.url[:80]!r})")
        if self.path and self.source != "csv":
            raise ValueError(f"path: only for forecast.source csv (this one is {self.source})")
        if self.url and self.source != "http":
            raise ValueError(f"url: only for forecast.source http (this one is {self.source})")
        return self


class UnitSimulator(_Model):
    """One unit's simulator (simulator.units.<unit>): where it starts, and faces besides its devices' own."""

    initial_soc_pct: float | None = Field(None, ge=0, le=100)
    initial_temperature_c: float | None = Field(None, ge=T_MIN_C, le=T_MAX_C)
    bms_modbus_port: int | None = Field(None, ge=1, le=65535, description="an extra BMS Modbus face")
    bms_opcua_port: int | None = Field(None, ge=1, le=65535, description="an extra BMS OPC UA face")


class Simulator(_Model):
    """The plant simulators (`bess-edge simulate` / `demo`). A multi-unit plant serves every unit's BMS and PCS
    on its device's port (devices sharing a host:port behind one gateway port), the POI meter on the meter
    device's port; `units:` here sets a unit's start and extra faces."""

    time_scale: float = Field(1.0, gt=0, le=10000)
    initial_soc_pct: float = Field(50.0, ge=0, le=100)
    ambient_c: float = Field(25.0, ge=T_MIN_C, le=T_MAX_C)
    initial_temperature_c: float = Field(25.0, ge=T_MIN_C, le=T_MAX_C)
    thermal_time_constant_s: float = Field(1800.0, gt=0)
    heating_c_per_mw: float = Field(2.0, ge=0, description="steady-state rise above ambient per MW of |P|")
    ramp_mw_per_s: float = Field(10.0, gt=0)
    rated_power_mw: float = Field(10.0, gt=0)
    bms_modbus_port: int | None = Field(1502, ge=1, le=65535)
    pcs_modbus_port: int | None = Field(1503, ge=1, le=65535)
    bms_opcua_port: int | None = Field(4841, ge=1, le=65535)
    control_port: int | None = Field(1504, ge=1, le=65535, description="HTTP control of the simulator (demo, tests)")
    host: str = "127.0.0.1"
    units: dict[str, UnitSimulator] = Field(default_factory=dict)


class Fcr(_Model):
    """Frequency containment reserve (services.fcr): the plant's power follows the POI meter's frequency,
    -capacity_mw x clamp((f - 50 Hz) / full_activation, -1, 1), none inside the deadband
    (controller/services/fcr.py)."""

    enabled: bool = Field(False, description="FCR on at start (the operator API switches it at runtime)")
    capacity_mw: float = Field(0.0, ge=0, le=10_000, description="the FCR band offered, each direction")
    deadband_mhz: float = Field(10.0, ge=0, le=500, description="no response while |f - 50 Hz| is within this")
    full_activation_mhz: float = Field(200.0, gt=0, le=1000, description="|f - 50 Hz| at which all of it is due")
    reserve_minutes: float = Field(15.0, ge=0, le=240, description="full activation held this long either way")
    fast_path_s: float = Field(
        0.1,
        ge=0.05,
        le=1.0,
        description="the meter's frequency is read this often (0.1: p99 step-to-PCS within 200 ms)",
    )
    tolerance_pct: float = Field(
        10.0, gt=0, le=100, description="provision records: a second is compliant within this share of capacity"
    )
    frequency_stale_s: float = Field(
        2.0, gt=0, le=60, description="a frequency older than this is unknown: no FCR contribution (alarm)"
    )


def fcr_reserve_pct(fcr: Fcr, battery: "Battery") -> tuple[float, float]:
    """SoC (% of capacity) that full activation for reserve_minutes takes: (down, up). Down: discharging
    capacity_mw draws capacity / discharge_efficiency from the cells; up: charging stores capacity x
    charge_efficiency. The one formula for the config check, the pre-trade check and the optimiser's reserve."""
    hours = fcr.capacity_mw * fcr.reserve_minutes / 60.0
    cap = battery.capacity_mwh
    return 100.0 * hours / battery.discharge_efficiency / cap, 100.0 * hours * battery.charge_efficiency / cap


class Services(_Model):
    """Grid services stacked on the schedule (issue 15). Off unless configured."""

    fcr: Fcr = Fcr()
    records_retention_days: float = Field(
        90.0, gt=0, le=3650, description="per-second provision records (evidence for the TSO) are kept this long"
    )


class SiteConfig(_Model):
    """The whole site file."""

    site: Site
    mode: Literal["production", "demo"] = "production"
    allow_insecure: bool = Field(False, description="production: accept a remote broker/exchange without TLS (warned)")
    devices: dict[str, Device]
    units: dict[str, Unit] = Field(default_factory=dict, description="optional with one bms and one pcs without unit")
    limits: Limits
    battery: Battery
    cycle: Cycle = Cycle()
    mqtt: Mqtt = Mqtt()
    web: Web = Web()
    scada: Scada = Scada()
    exchange: Exchange = Exchange()
    trading: Trading = Trading()
    forecast: Forecast = Forecast()
    simulator: Simulator = Simulator()
    services: Services = Services()

    # set by load_config, not by the file
    base_dir: Path | None = Field(None, exclude=True)
    # risks the file accepts on purpose (allow_no_reversion ...): logged on every start, printed by check-config
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return self._warnings

    @model_validator(mode="after")
    def _relations(self) -> "SiteConfig":
        """Checks between sections. All of them are reported at once, each with its own YAML path (load_config
        expands them; see _expand)."""
        errors = _relation_errors(self)
        if errors:
            raise PydanticCustomError(
                "relations",
                "{summary}",
                {"summary": "; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in errors), "errors": errors},
            )
        return self

    def device(self, role: str) -> tuple[str, Device]:
        """The first device with this role (of a one-unit plant: its only bms, its only pcs)."""
        return next((n, d) for n, d in self.devices.items() if d.role == role)

    def unit_plan(self) -> list[UnitPlan]:
        """Every unit in file order. A file without units: is one implicit unit (IMPLICIT_UNIT) rated at the
        site's largest power limit, with the battery's capacity."""
        if not self.units:
            (pn, pcs), (bn, bms) = self.device("pcs"), self.device("bms")
            rating = max(self.limits.p_charge_max_mw, self.limits.p_discharge_max_mw)
            return [UnitPlan(IMPLICIT_UNIT, pn, pcs, bn, bms, rating, self.battery.capacity_mwh)]
        plan = []
        for unit, u in self.units.items():
            pn, pcs = next((n, d) for n, d in self.devices.items() if d.role == "pcs" and d.unit == unit)
            bn, bms = next((n, d) for n, d in self.devices.items() if d.role == "bms" and d.unit == unit)
            plan.append(UnitPlan(unit, pn, pcs, bn, bms, u.rated_mw, u.capacity_mwh))
        return plan

    def meter(self) -> tuple[str, Device] | None:
        """The POI meter, if the site has one."""
        return next(((n, d) for n, d in self.devices.items() if d.role == "meter"), None)

    def profile_path(self, device: Device) -> Path:
        p = Path(device.profile)
        return p if p.is_absolute() else (self.base_dir or Path.cwd()) / p

    def load_profile(self, device: Device) -> Profile:
        return load_profile(self.profile_path(device))


Loc = tuple[str | int, ...]


def _relation_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """(YAML path, message) for every relation between sections that does not hold."""
    errors = _device_name_errors(cfg) + _unit_errors(cfg)
    period, stale = cfg.cycle.period_s, cfg.limits.stale_after_s
    if stale <= period:
        errors.append((("limits", "stale_after_s"), f"must be > cycle.period_s (got {stale:g} <= {period:g})"))
    for name, dev in cfg.devices.items():
        loc: Loc = ("devices", name)
        if dev.poll_interval_s * POLL_PERIODS_STALE > stale:
            errors.append(
                (
                    loc + ("poll_interval_s",),
                    f"must be <= limits.stale_after_s / {POLL_PERIODS_STALE} (got {dev.poll_interval_s:g} > "
                    f"{stale / POLL_PERIODS_STALE:g}): a device only goes stale after "
                    f"{POLL_PERIODS_STALE} poll periods without a good read",
                )
            )
        if dev.timeout_s >= stale:
            errors.append(
                (loc + ("timeout_s",), f"must be < limits.stale_after_s (got {dev.timeout_s:g} >= {stale:g})")
            )
        if dev.role == "pcs" and dev.reversion_timeout_s < 2 * period:
            errors.append(
                (
                    loc + ("reversion_timeout_s",),
                    f"must be >= 2 x cycle.period_s (got {dev.reversion_timeout_s:g} < {2 * period:g}): "
                    "the PCS would revert between two setpoint writes",
                )
            )
        if dev.role != "pcs" and dev.allow_no_reversion:
            errors.append((loc + ("allow_no_reversion",), f"only for a device with role pcs (this one is {dev.role})"))
    errors += _port_clashes("", _listeners(cfg))
    errors += _fcr_errors(cfg)
    sim = cfg.simulator
    errors += _port_clashes(
        "simulator.",
        {f: getattr(sim, f) for f in ("bms_modbus_port", "pcs_modbus_port", "bms_opcua_port", "control_port")},
    )
    return errors + _iec104_errors(cfg)


def _device_name_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """Device names that alarm keys ("<device>:<alarm>") would confuse: the reserved ones and any with a ':'."""
    errors: list[tuple[Loc, str]] = []
    for name in cfg.devices:
        if name in RESERVED_DEVICE_NAMES:
            errors.append(
                (
                    ("devices", name),
                    f"the device name {name!r} is reserved: alarm keys use it for {RESERVED_DEVICE_NAMES[name]}, "
                    "so this device's alarms would be taken for those; rename the device",
                )
            )
        elif ":" in name:
            errors.append(
                (
                    ("devices", name),
                    f"a device name may not contain ':' (got {name!r}): alarm keys are '<device>:<alarm>', so its "
                    "alarms would be read as another device's; rename the device",
                )
            )
    return errors


def _iec104_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """The IEC 104 face: who may connect, its TLS, and the offered aFRR band against the plant's limits and
    the 5-minute full activation."""
    face, lim = cfg.scada.iec104, cfg.limits
    loc: Loc = ("scada", "iec104")
    errors: list[tuple[Loc, str]] = []
    if face.enabled and not face.allow_clients and not _is_loopback_host(face.host):
        errors.append(
            (
                loc + ("allow_clients",),
                f"required when host is not a loopback address (got host {face.host!r}): list the controlling "
                "station's addresses; every other client is refused",
            )
        )
    tls = face.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        errors.append((loc + ("tls", "key_file"), "cert_file and key_file go together (or neither: self-signed)"))
    if tls.enabled and not tls.ca_file and not tls.client_certs:
        errors.append(
            (
                loc + ("tls", "client_certs"),
                "required when tls is enabled, or tls.ca_file: the controlling station's certificate is checked",
            )
        )
    for key, lim_key in (("afrr_up_mw", "p_discharge_max_mw"), ("afrr_down_mw", "p_charge_max_mw")):
        if getattr(face, key) > getattr(lim, lim_key):
            errors.append(
                (
                    loc + (key,),
                    f"must be <= limits.{lim_key} (got {getattr(face, key):g} > {getattr(lim, lim_key):g}): "
                    "the plant cannot deliver more than its limit",
                )
            )
    band, ramp = max(face.afrr_up_mw, face.afrr_down_mw), face.afrr_ramp_mw_per_min
    if ramp is not None and ramp * AFRR_FULL_ACTIVATION_S / 60.0 < band - 1e-9:
        errors.append(
            (
                loc + ("afrr_ramp_mw_per_min",),
                f"too slow for full activation of the offered band within 5 minutes (got {ramp:g} MW/min; "
                f"the band of {band:g} MW needs >= {band * 60.0 / AFRR_FULL_ACTIVATION_S:g})",
            )
        )
    return errors


def _fcr_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """services.fcr against the plant: the band fits the power limits and the rating, its reserve fits the SoC
    window, the frequency comes from a POI meter, the deadband is inside the full activation."""
    fcr, lim = cfg.services.fcr, cfg.limits
    loc: Loc = ("services", "fcr")
    errors: list[tuple[Loc, str]] = []
    if fcr.deadband_mhz >= fcr.full_activation_mhz:
        errors.append(
            (
                loc + ("deadband_mhz",),
                f"must be < services.fcr.full_activation_mhz (got {fcr.deadband_mhz:g} >= {fcr.full_activation_mhz:g})",
            )
        )
    rating = min(lim.p_charge_max_mw, lim.p_discharge_max_mw, lim.grid_limit_mw)
    if fcr.capacity_mw > rating:
        errors.append(
            (
                loc + ("capacity_mw",),
                f"must be <= the plant's power either way, min(limits.p_charge_max_mw, p_discharge_max_mw, "
                f"grid_limit_mw) = {rating:g} MW (got {fcr.capacity_mw:g})",
            )
        )
    if fcr.enabled and fcr.capacity_mw <= 0:
        errors.append((loc + ("capacity_mw",), "must be > 0 when services.fcr.enabled is true (got 0)"))
    if (fcr.enabled or fcr.capacity_mw > 0) and cfg.meter() is None:
        errors.append((loc, "needs a POI meter for the grid frequency: a device with role meter in devices:"))
    if (fcr.enabled or fcr.capacity_mw > 0) and fcr.fast_path_s > cfg.cycle.period_s:
        errors.append(
            (
                loc + ("fast_path_s",),
                f"must be <= cycle.period_s (got {fcr.fast_path_s:g} > {cfg.cycle.period_s:g}): "
                "the fast path is there to be faster than the cycle",
            )
        )
    # full activation for reserve_minutes either way must fit between soc_min and soc_max
    down_pct, up_pct = fcr_reserve_pct(fcr, cfg.battery)
    window = lim.soc_max_pct - lim.soc_min_pct
    if down_pct + up_pct >= window:
        errors.append(
            (
                loc + ("reserve_minutes",),
                f"full activation of {fcr.capacity_mw:g} MW for {fcr.reserve_minutes:g} min each way needs "
                f"{down_pct:.3g} % + {up_pct:.3g} % of battery.capacity_mwh {cfg.battery.capacity_mwh:g} MWh, "
                f"not less than the SoC window {lim.soc_min_pct:g}-{lim.soc_max_pct:g} %: lower capacity_mw or "
                "reserve_minutes",
            )
        )
    return errors


def _unit_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """The plant's topology: units (or the one implicit unit), the devices in each, the meter, the same
    device configured twice, ratings and capacities against the site's limits and battery."""
    errors = _meter_errors(cfg)
    members = {n: d for n, d in cfg.devices.items() if d.role != "meter"}
    with_unit = [n for n, d in members.items() if d.unit is not None]
    without = [n for n, d in members.items() if d.unit is None]
    if with_unit and without:
        errors += [
            (
                ("devices", n),
                f"names no unit, while devices.{with_unit[0]} does: every bms and pcs names "
                "its unit, or none does (one unit)",
            )
            for n in without
        ]
    elif not with_unit:
        errors += _one_unit_errors(cfg, members)
    else:
        errors += _unit_member_errors(cfg, members, with_unit)
        for unit in cfg.simulator.units:
            if unit not in cfg.units:
                errors.append((("simulator", "units", unit), f"not in units: ({', '.join(cfg.units)})"))
        errors += _port_clashes("", _simulator_listeners(cfg))
        errors += _unit_rating_errors(cfg)
    return errors + _same_device_errors(cfg) + _gateway_connection_errors(cfg)


def _gateway_connection_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """The devices at one Modbus host:port (a gateway) share its connections: they must agree how many."""
    first: dict[tuple[str, int], str] = {}
    errors: list[tuple[Loc, str]] = []
    for n, d in cfg.devices.items():
        if d.protocol == "opcua":
            continue
        other = first.setdefault((d.host, d.port), n)
        if d.connections != cfg.devices[other].connections:
            errors.append(
                (
                    ("devices", n, "connections"),
                    f"{d.connections}, but devices.{other} at the same {d.host}:{d.port} (a gateway) says "
                    f"{cfg.devices[other].connections}: the devices behind one gateway share its connections",
                )
            )
    return errors


def _meter_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """At most one meter, and it belongs to no unit: it measures the plant at the POI."""
    errors: list[tuple[Loc, str]] = []
    meters = [n for n, d in cfg.devices.items() if d.role == "meter"]
    if len(meters) > 1:
        errors.append(
            (
                ("devices", meters[1], "role"),
                f"at most one device with role 'meter' (the POI's); devices.{meters[0]} is one",
            )
        )
    for n in meters:
        if cfg.devices[n].unit is not None:
            errors.append((("devices", n, "unit"), "a meter measures the plant at the POI: it belongs to no unit"))
    return errors


def _one_unit_errors(cfg: SiteConfig, members: dict[str, Device]) -> list[tuple[Loc, str]]:
    """A plant of one implicit unit (no device names a unit): exactly one BMS and one PCS, and no units:."""
    errors: list[tuple[Loc, str]] = []
    roles = [d.role for d in members.values()]
    for role in ("bms", "pcs"):
        if roles.count(role) != 1:
            errors.append(
                (
                    ("devices",),
                    f"need exactly one device with role {role!r} (found {roles.count(role)})"
                    + (", or units: with devices naming their unit" if roles.count(role) > 1 else ""),
                )
            )
    if cfg.units:
        errors.append(
            (
                ("units",),
                "no bms or pcs names a unit (say devices.<name>.unit on each, or leave "
                "units: out for a plant of one unit)",
            )
        )
    return errors


def _unit_member_errors(cfg: SiteConfig, members: dict[str, Device], with_unit: list[str]) -> list[tuple[Loc, str]]:
    """Every device names a configured unit, and every unit is exactly one PCS and one BMS."""
    errors: list[tuple[Loc, str]] = []
    for n in with_unit:
        if cfg.devices[n].unit not in cfg.units:
            errors.append(
                (
                    ("devices", n, "unit"),
                    f"unit {cfg.devices[n].unit!r} is not in units: ({', '.join(cfg.units) or 'none'})",
                )
            )
    for unit in cfg.units:
        mine = {role: [n for n, d in members.items() if d.unit == unit and d.role == role] for role in ("pcs", "bms")}
        if not mine["pcs"] and not mine["bms"]:
            errors.append((("units", unit), "no device names this unit (devices.<name>.unit)"))
            continue
        for role, names in mine.items():
            what = "a PCS" if role == "pcs" else "a BMS"
            if not names:
                errors.append(
                    (
                        ("units", unit),
                        f"no device with role {role} names this unit: a unit is one PCS and the BMS of its battery",
                    )
                )
            elif len(names) > 1:
                errors.append(
                    (
                        ("devices", names[1], "unit"),
                        f"unit {unit!r} has {what} already (devices.{names[0]}): a unit is one PCS and one BMS",
                    )
                )
    return errors


def _unit_rating_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """The units' ratings carry the site's power limits, and their capacities add up to the battery's."""
    errors: list[tuple[Loc, str]] = []
    lim, units = cfg.limits, cfg.units.values()
    total_mw = sum(u.rated_mw for u in units)
    for key in ("p_discharge_max_mw", "p_charge_max_mw"):
        if cfg.units and total_mw < getattr(lim, key):
            errors.append(
                (
                    ("units",),
                    f"the units' ratings add up to {total_mw:g} MW, below limits.{key} "
                    f"({getattr(lim, key):g} MW): the plant cannot deliver its own limit",
                )
            )
    total_mwh = sum(u.capacity_mwh for u in units)
    if cfg.units and abs(total_mwh - cfg.battery.capacity_mwh) > 1e-6 * max(1.0, total_mwh):
        errors.append(
            (
                ("battery", "capacity_mwh"),
                f"must be the units' total capacity {total_mwh:g} MWh (got {cfg.battery.capacity_mwh:g})",
            )
        )
    return errors


def _simulator_listeners(cfg: SiteConfig) -> dict[str, int | None]:
    """YAML path -> port of every server `bess-edge simulate` opens for a multi-unit plant: each device's
    host:port once (devices behind one gateway share it), the units' extra faces, the control app."""
    out: dict[str, int | None] = {}
    seen: set[tuple[str, int]] = set()
    for n, d in cfg.devices.items():
        if (d.host, d.port) not in seen:
            seen.add((d.host, d.port))
            out[f"devices.{n}.port"] = d.port
    for unit, u in cfg.simulator.units.items():
        out[f"simulator.units.{unit}.bms_modbus_port"] = u.bms_modbus_port
        out[f"simulator.units.{unit}.bms_opcua_port"] = u.bms_opcua_port
    out["simulator.control_port"] = cfg.simulator.control_port
    return out


def _same_device_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """One device configured twice (the same host, port, unit id and profile), e.g. a PCS in two units. Devices
    behind one gateway share host:port but have their own unit ids; that is fine."""
    seen: dict[tuple, str] = {}
    errors: list[tuple[Loc, str]] = []
    for n, d in cfg.devices.items():
        key = (
            d.protocol == "opcua",
            d.host,
            d.port,
            d.unit_id if d.protocol != "opcua" else d.endpoint_path,
            d.profile,
        )
        if key in seen:
            where = f"{d.host}:{d.port}" + (f" unit id {d.unit_id}" if d.protocol != "opcua" else "")
            errors.append(
                (
                    ("devices", n),
                    f"the same device as devices.{seen[key]} ({where}, same profile): "
                    "one device cannot be in two places (say its unit_id behind a gateway)",
                )
            )
        else:
            seen[key] = n
    return errors


def _listeners(cfg: SiteConfig) -> dict[str, int]:
    """YAML path -> port of every server the daemon opens (web, each enabled SCADA face)."""
    out = {"web.port": cfg.web.port} if cfg.web.enabled else {}
    for face_name in type(cfg.scada).model_fields:
        face = getattr(cfg.scada, face_name)
        if getattr(face, "enabled", False) and isinstance(getattr(face, "port", None), int):
            out[f"scada.{face_name}.port"] = face.port
    return out


def _port_clashes(prefix: str, ports: dict[str, int | None]) -> list[tuple[Loc, str]]:
    seen: dict[int, str] = {}
    errors: list[tuple[Loc, str]] = []
    for path, port in ports.items():
        if not port:
            continue
        if port in seen:
            errors.append((tuple(f"{prefix}{path}".split(".")), f"port {port} is already {seen[port]}'s"))
        else:
            seen[port] = f"{prefix}{path}"
    return errors


class Secrets(BaseModel):
    """Secrets from the environment (or an env file), never from the YAML."""

    api_keys: list[str]  # API_KEY: full access (comma-separated: rotation)
    hmac_secret: str  # HMAC_SECRET: signs trades, acks and exchange requests, nothing else
    mqtt_url: str
    exchange_base_url: str
    api_keys_read: list[str] = []  # API_KEY_READ: read-only keys (GET, /ws; writes get 403)
    exchange_api_key: str | None = None  # EXCHANGE_API_KEY: the key this site presents to the exchange
    warnings: list[str] = []  # risks the site file accepts (allow_insecure): logged on every start

    @property
    def mqtt(self) -> "MqttUrl":
        return parse_mqtt_url(self.mqtt_url)


class MqttUrl(BaseModel):
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> MqttUrl:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT_URL: scheme must be mqtt:// or mqtts:// (got {u.scheme!r})")
    tls = u.scheme in ("mqtts", "ssl")
    return MqttUrl(
        host=u.hostname or "127.0.0.1",
        port=u.port or (8883 if tls else 1883),
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
        tls=tls,
    )


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile syntax, # comments, optional quotes)."""
    env: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(str(path), [f"line {n}: expected KEY=VALUE"])
        k, v = line.split("=", 1)
        env[k.strip()] = v.strip().strip('"').strip("'")
    return env


def load_secrets(config: SiteConfig, env: dict[str, str] | None = None) -> Secrets:
    """Secrets from `env` (default os.environ). Demo secrets are refused unless the config says mode: demo."""
    env = dict(os.environ if env is None else env)
    errors = []
    keys = _key_list(env.get("API_KEY", ""))
    read_keys = _key_list(env.get("API_KEY_READ", ""))
    if set(read_keys) & set(keys):
        errors.append("API_KEY_READ: a key may not be in both API_KEY and API_KEY_READ")
    exchange_key = env.get("EXCHANGE_API_KEY", "").strip() or None
    if not keys:
        errors.append("API_KEY: not set (a comma-separated list of API keys; the daemon refuses to start without one)")
    secret = env.get("HMAC_SECRET", "")
    if not secret:
        errors.append("HMAC_SECRET: not set")
    if config.mode != "demo":
        if DEMO_API_KEY in keys:
            errors.append("API_KEY: the demo key 'demo' is refused unless the config says mode: demo")
        if secret == DEMO_HMAC_SECRET:
            errors.append("HMAC_SECRET: the demo secret is refused unless the config says mode: demo")
        if exchange_key == DEMO_API_KEY:
            errors.append("EXCHANGE_API_KEY: the demo key 'demo' is refused unless the config says mode: demo")
        elif exchange_key and exchange_key in set(keys) | set(read_keys):
            # one secret, one purpose: whoever learns the site's exchange key must not also get its local API
            errors.append("EXCHANGE_API_KEY: must not be one of the local keys (API_KEY, API_KEY_READ)")
    mqtt_url, exchange_url = transport_urls(env)
    try:
        parse_mqtt_url(mqtt_url)
    except ValueError as e:
        errors.append(str(e))
    insecure, warnings = transport_check(config, env)
    errors += insecure
    if errors:
        raise ConfigError("environment", errors)
    return Secrets(
        api_keys=keys,
        hmac_secret=secret,
        mqtt_url=mqtt_url,
        exchange_base_url=exchange_url,
        api_keys_read=read_keys,
        exchange_api_key=exchange_key,
        warnings=warnings,
    )


def transport_urls(env: dict[str, str]) -> tuple[str, str]:
    """MQTT_URL and EXCHANGE_BASE_URL with their defaults (both on this machine)."""
    return (
        env.get("MQTT_URL", "mqtt://127.0.0.1:1883"),
        env.get("EXCHANGE_BASE_URL", "http://127.0.0.1:9000").rstrip("/"),
    )


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (IPv4-mapped too). Other names are not resolved: they count as remote."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def transport_check(config: SiteConfig, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for plain-text links leaving this machine. In mode: production a remote broker
    without TLS or a remote exchange over http is an error, unless the site file says allow_insecure: true:
    then each is a warning, logged on every start. Loopback is fine without TLS; other modes are labs."""
    mqtt_url, exchange_url = transport_urls(env)
    problems = []
    if config.mqtt.enabled:
        try:
            m = parse_mqtt_url(mqtt_url)
        except ValueError:
            m = None  # reported by load_secrets
        if m is not None and not is_loopback_host(m.host):
            if not m.tls and config.mqtt.tls is None:
                problems.append(
                    f"MQTT_URL: the broker {m.host} is not on this machine and the link is not "
                    "encrypted (mqtt://); use mqtts:// or mqtt.tls"
                )
            elif config.mqtt.tls is not None and config.mqtt.tls.insecure:
                problems.append(
                    f"MQTT_URL: the broker {m.host} is not on this machine and mqtt.tls.insecure: true "
                    "turns off the check of its certificate"
                )
    u = urlparse(exchange_url)
    errors = []
    if u.scheme not in ("http", "https") or not u.hostname:
        errors.append(f"EXCHANGE_BASE_URL: must be http(s)://host[:port] (got {exchange_url!r})")
    elif u.scheme == "http" and not is_loopback_host(u.hostname):
        problems.append(
            f"EXCHANGE_BASE_URL: the exchange {u.hostname} is not on this machine and the link is not "
            "encrypted (http://); use https://"
        )
    if config.mode != "production" or not problems:
        return errors, []
    if config.allow_insecure:
        return errors, [f"{p} (accepted by allow_insecure: true)" for p in problems]
    return errors + [
        f"{p} (refused in mode: production unless the site file says allow_insecure: true)" for p in problems
    ], []


def _key_list(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of a YAML path in the composed node tree, or of its nearest existing parent (None when
    not even its first key is in the file: line 1 would point at nothing)."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        if node is not root:
            line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _resolve_files(cfg: SiteConfig) -> None:
    """Relative certificate/key/users file paths are relative to the site file, not to the working directory
    (which is / under systemd)."""

    def absolute(v: str | None) -> str | None:
        return v if v is None or Path(v).is_absolute() else str(cfg.base_dir / v)

    for tls in (cfg.mqtt.tls, cfg.web.tls):
        if tls is not None:
            for attr in ("ca_file", "cert_file", "key_file"):
                if hasattr(tls, attr):
                    setattr(tls, attr, absolute(getattr(tls, attr)))
    iec_tls = cfg.scada.iec104.tls
    for attr in ("cert_file", "key_file", "ca_file"):
        setattr(iec_tls, attr, absolute(getattr(iec_tls, attr)))
    iec_tls.client_certs = [absolute(c) for c in iec_tls.client_certs]
    if cfg.scada.opcua is not None and getattr(cfg.scada.opcua, "users_file", None):
        cfg.scada.opcua.users_file = absolute(cfg.scada.opcua.users_file)
    cfg.forecast.path = absolute(cfg.forecast.path)


def _forecast_file_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """A csv forecast's file must be there and readable at start (its content is read, and checked, at run)."""
    path = cfg.forecast.path
    if cfg.forecast.source != "csv" or not path:
        return []
    if not Path(path).is_file():
        return [(("forecast", "path"), f"no such file: {path}")]
    if not os.access(path, os.R_OK):
        return [(("forecast", "path"), f"not readable: {path}")]
    return []


def load_config(path: str | Path) -> SiteConfig:
    """Read, validate and resolve a site file, profiles and users file included. Raises ConfigError listing
    every error, each led by its YAML path (and line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from e
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from e
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the file must be a mapping (site:, devices:, limits:, battery: ...)"])
    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(str(path), [_located(root, loc, msg) for loc, msg in _expand(e)]) from e
    cfg.base_dir = path.resolve().parent
    _resolve_files(cfg)
    errors = [
        _located(root, loc, msg)
        for loc, msg in _device_errors(cfg)
        + _users_file_errors(cfg)
        + _iec104_file_errors(cfg)
        + _forecast_file_errors(cfg)
    ]
    if errors:
        raise ConfigError(str(path), errors)
    return cfg


def _expand(err: ValidationError) -> list[tuple[Loc, str]]:
    """(YAML path, message) per error; the relations check's bundle becomes one line per relation, and the
    offending value is named where pydantic's message does not (`Input should be a finite number (got nan)`)."""
    out: list[tuple[Loc, str]] = []
    for e, line in zip(err.errors(), format_validation_error(err)):
        if e["type"] == "relations":
            out += [(tuple(e["loc"]) + tuple(loc), msg) for loc, msg in e["ctx"]["errors"]]
            continue
        msg = line.partition(": ")[2] if e["loc"] else line
        value = e.get("input")
        if (
            e["type"] not in ("extra_forbidden", "missing")
            and "(got " not in msg
            and isinstance(value, (int, float, str, bool))
            and len(repr(value)) <= 80
        ):
            msg = f"{msg} (got {value!r})"
        out.append((tuple(e["loc"]), msg))
    return out


def _located(root: yaml.Node | None, loc: Loc, msg: str) -> str:
    """`a.b.c (line N): msg`, or just the message for the file as a whole."""
    if not loc:
        return msg
    n = _line_of(root, loc)
    where = ".".join(str(x) for x in loc)
    return f"{where} (line {n}): {msg}" if n else f"{where}: {msg}"


def _reversion_points(prof: Profile) -> list[str]:
    """The points controller/cycle/dispatch.py uses to make the PCS fall back to 0 MW on its own: the SunSpec-style
    reversion timer (wset_rvrt_tms) or a heartbeat/watchdog register; only writable ones count."""
    return [n for n in ("wset_rvrt_tms", "heartbeat") if n in prof.points and prof.points[n].writable]


def _device_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """Checks that need each device's profile: it loads, fits the protocol, and a PCS can revert by itself."""
    errors: list[tuple[Loc, str]] = []
    for name, dev in cfg.devices.items():
        loc: Loc = ("devices", name)
        try:
            prof = cfg.load_profile(dev)
        except ProfileError as e:
            errors.append((loc + ("profile",), str(e)))
            continue
        if prof.protocol != dev.protocol:
            errors.append(
                (loc + ("profile",), f"profile {prof.name!r} is for {prof.protocol}, device says {dev.protocol}")
            )
        if dev.role != "pcs":
            continue
        if not _reversion_points(prof):
            if dev.allow_no_reversion:
                cfg.warnings.append(
                    f"devices.{name}: profile {prof.name!r} has no reversion point (wset_rvrt_tms or heartbeat): "
                    "if the controller dies, the PCS holds its last setpoint (accepted by allow_no_reversion: true)"
                )
            else:
                errors.append(
                    (
                        loc + ("profile",),
                        f"profile {prof.name!r} has no writable reversion point (wset_rvrt_tms or heartbeat): "
                        "the PCS would hold its last setpoint if the controller died; say "
                        f"devices.{name}.allow_no_reversion: true to accept that",
                    )
                )
        tms = prof.points.get("wset_rvrt_tms")
        if tms is not None and tms.writable:
            device_value = dev.reversion_timeout_s / tms.factor  # seconds -> the point's unit
            lo, hi = tms.min, tms.max
            if (lo is not None and device_value < lo) or (hi is not None and device_value > hi):
                errors.append(
                    (
                        loc + ("reversion_timeout_s",),
                        f"profile {prof.name!r} accepts wset_rvrt_tms {lo:g}..{hi:g} {tms.unit or 's'} "
                        f"(got {dev.reversion_timeout_s:g} s)",
                    )
                )
    return errors


def _iec104_file_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """The IEC 104 face's TLS files must be there to read (paths are resolved against the site file's folder)."""
    face = cfg.scada.iec104
    if not (face.enabled and face.tls.enabled):
        return []
    loc: Loc = ("scada", "iec104", "tls")
    files = [(k, getattr(face.tls, k)) for k in ("cert_file", "key_file", "ca_file")]
    files += [(("client_certs", i), f) for i, f in enumerate(face.tls.client_certs)]
    errors: list[tuple[Loc, str]] = []
    for key, path in files:
        if path is not None and not Path(path).is_file():
            errors.append((loc + (key if isinstance(key, tuple) else (key,)), f"cannot read {path}: no such file"))
    return errors


def _users_file_errors(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """The OPC UA face's users file, as controller/scada/opcua.py reads it:
    `users: {name: {password: scrypt$<salt hex>$<hash hex>, role: viewer|operator}}`."""
    ua = cfg.scada.opcua
    loc: Loc = ("scada", "opcua", "users_file")
    if not getattr(ua, "enabled", False):
        return []
    if not ua.users_file:
        if cfg.mode == "demo":
            return []  # the demo's well-known users, like its API key
        return [
            (loc, "required when scada.opcua is enabled outside mode: demo (no anonymous login on the OPC UA face)")
        ]
    path = Path(ua.users_file)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        return [(loc, f"cannot read {path}: {e.strerror}")]
    except yaml.YAMLError as e:
        return [(loc, f"{path}: not valid YAML: {e}")]
    shape = "users: {name: {password: scrypt$..., role: viewer|operator}}"
    if not isinstance(data, dict) or set(data) != {"users"} or not isinstance(data["users"], dict):
        return [(loc, f"{path}: must be a mapping with one key, {shape}")]
    if not data["users"]:
        return [(loc, f"{path}: no users (nobody could log in)")]
    errors = []
    for name, user in data["users"].items():
        where = f"{path}: users.{name}"
        if not isinstance(user, dict):
            errors.append((loc, f"{where}: must be a mapping {{password: scrypt$..., role: viewer|operator}}"))
            continue
        for key in sorted(set(user) - {"password", "role"}):
            errors.append((loc, f"{where}.{key}: unknown key"))
        role, password = user.get("role"), user.get("password")
        if role not in USER_ROLES:
            errors.append((loc, f"{where}.role: must be one of {', '.join(USER_ROLES)} (got {role!r})"))
        if not isinstance(password, str) or not _SCRYPT_HASH.match(password):
            got = "missing" if password is None else "not a scrypt hash"
            errors.append(
                (
                    loc,
                    f"{where}.password: must be scrypt$<salt hex>$<hash hex> from "
                    f"controller.scada.opcua.hash_password ({got})",
                )
            )
    return errors
