"""What the controller needs of each role's device, as profile point names with where a device may carry them:
SunSpec refs for a PCS and a meter, OPC UA browse-name spellings for a BMS. The probe drafts profiles from it.

`need`: "needed" (the controller cannot run the device without it: status offline or no control), "used" (read or
written when present), "reversion" (a PCS needs one of them: the device falls back to 0 W by itself), "info".
"""

from __future__ import annotations

from dataclasses import dataclass

NEEDED, USED, REVERSION, INFO = "needed", "used", "reversion", "info"


@dataclass(frozen=True)
class Want:
    name: str
    refs: tuple[str, ...]  # SunSpec '<model>.<point>' or OPC UA name spellings (normalised), first wins
    need: str = INFO
    unit: str = ""
    writable: bool = False
    limits: str | tuple[float, float] | None = None  # "rating": +-the rated power in W; or (min, max)
    description: str = ""
    bits_from_symbols: bool = False  # bit names from the SunSpec model's symbols
    plausible: tuple[float, float] | None = None
    sign: int = 1  # -1: the device counts the other way round from ours (a meter's W: + import)


_INVERTER_W = ("701.W", "103.W", "113.W", "102.W", "112.W", "101.W", "111.W")

PCS: tuple[Want, ...] = (
    Want("power_mw", _INVERTER_W, NEEDED, "W", description="Total active power, + discharge (export)"),
    Want("setpoint_mw", ("704.WSet",), NEEDED, "W", True, "rating", "Active power setpoint, + discharge, - charge"),
    Want(
        "wset_rvrt_tms",
        ("704.WSetRvrtTms",),
        REVERSION,
        "s",
        True,
        (0, 86400),
        "Seconds without a new setpoint or heartbeat before the device reverts (0 = never)",
    ),
    Want(
        "heartbeat",
        ("802.CtrlHb",),
        REVERSION,
        "",
        True,
        (0, 65535),
        "Controller heartbeat; each write also restarts the reversion timer",
    ),
    Want("wset_ena", ("704.WSetEna",), USED, "", True, (0, 1), "1 = follow WSet"),
    Want(
        "wset_rvrt",
        ("704.WSetRvrt",),
        USED,
        "W",
        True,
        "rating",
        "Power the device falls back to when the reversion time passes",
    ),
    Want("alarm_bits", ("701.Alrm",), USED, description="DER alarms; any bit set = alarm", bits_from_symbols=True),
    Want("wset_ena_rvrt", ("704.WSetEnaRvrt",), INFO, "", True, (0, 1), "1 = revert to WSetRvrt"),
    Want("wset_mod", ("704.WSetMod",), INFO, "", True, (0, 1), "0 = percent of WMax, 1 = watts"),
    Want("wset_rvrt_rem_s", ("704.WSetRvrtRem",), INFO, "s", description="Reversion time remaining"),
    Want("manufacturer", ("1.Mn",), description="Manufacturer"),
    Want("model", ("1.Md",), description="Model"),
    Want("serial", ("1.SN",), description="Serial number"),
    Want("apparent_power_mva", ("701.VA",), unit="VA", description="Total apparent power"),
    Want("reactive_power_mvar", ("701.Var",), unit="var", description="Total reactive power"),
    Want("ac_current_a", ("701.A",), unit="A", description="Total AC current"),
    Want("ac_voltage_v", ("701.LLV",), unit="V", description="Line-to-line voltage", plausible=(0, 2000)),
    Want("frequency_hz", ("701.Hz",), unit="Hz", description="Grid frequency", plausible=(40, 70)),
    Want("status", ("701.St",), description="Operating state: 0 off, 1 on"),
    Want("inverter_state", ("701.InvSt",), description="Inverter state (SunSpec 701.InvSt)"),
    Want("connection_state", ("701.ConnSt",), description="0 disconnected, 1 connected"),
    Want("energy_exported_mwh", ("701.TotWhInj",), unit="Wh", description="Total active energy injected"),
    Want("energy_imported_mwh", ("701.TotWhAbs",), unit="Wh", description="Total active energy absorbed"),
    Want("cabinet_temperature_c", ("701.TmpCab",), unit="°C", description="Cabinet temperature"),
    Want("soc_pct", ("713.SoC", "802.SoC"), unit="%", description="State of charge"),
    Want("soh_pct", ("802.SoH", "713.SoH"), unit="%", description="State of health"),
    Want("capacity_mwh", ("713.WHRtg", "802.WHRtg"), unit="Wh", description="Energy rating"),
    Want("max_charge_mw", ("802.WChaRteMax",), unit="W", description="Maximum charge rate"),
    Want("max_discharge_mw", ("802.WDisChaRteMax",), unit="W", description="Maximum discharge rate"),
    Want("battery_voltage_v", ("802.V",), unit="V", description="DC bus voltage"),
    Want("battery_current_a", ("802.A",), unit="A", description="DC current, + discharge"),
    Want("battery_power_mw", ("802.W",), unit="W", description="DC power, + discharge"),
    Want("battery_state", ("802.State",), description="Battery state (SunSpec 802.State)"),
    Want("battery_events", ("802.Evt1",), description="Battery alarms and warnings", bits_from_symbols=True),
)

# Models that make a device a PCS, and the places its rating may be read from (W).
PCS_MODELS = (701, 704, 802)
RATING_REFS = ("702.WMaxRtg", "802.WDisChaRteMax", "120.WRtg", "121.WMax")

METER_MODELS = (201, 202, 203, 204, 211, 212, 213, 214)


def meter_wants(model_id: int) -> tuple[Want, ...]:
    """The POI meter's points in meter model `model_id` (201-204 integer + scale factor, 211-214 float), named as
    in config/profiles/sunspec-meter.yaml."""
    m = str(model_id)
    return (
        Want("manufacturer", ("1.Mn",), description="Manufacturer"),
        Want("model", ("1.Md",), description="Model"),
        Want("serial", ("1.SN",), description="Serial number"),
        Want("power_mw", (f"{m}.W",), NEEDED, "W", description="Total active power at the POI, + export", sign=-1),
        Want("frequency_hz", (f"{m}.Hz",), USED, "Hz", description="Grid frequency", plausible=(45, 65)),
        Want("reactive_power_mvar", (f"{m}.VAR",), unit="var", description="Total reactive power, + export", sign=-1),
        Want("apparent_power_mva", (f"{m}.VA",), unit="VA", description="Total apparent power"),
        Want("power_factor_pct", (f"{m}.PF",), unit="%", description="Power factor, percent", plausible=(-100, 100)),
        Want(
            "voltage_ln_v",
            (f"{m}.PhV",),
            unit="V",
            description="Average line-to-neutral voltage",
            plausible=(0, 500000),
        ),
        Want(
            "voltage_ll_v", (f"{m}.PPV",), unit="V", description="Average line-to-line voltage", plausible=(0, 500000)
        ),
        Want("current_a", (f"{m}.A",), unit="A", description="Total current", plausible=(0, 100000)),
        Want("energy_exported_mwh", (f"{m}.TotWhExp",), unit="Wh", description="Total active energy exported"),
        Want("energy_imported_mwh", (f"{m}.TotWhImp",), unit="Wh", description="Total active energy imported"),
    )


def _n(*names: str) -> tuple[str, ...]:
    return names


# BMS over OPC UA: browse names are compared lower-case with everything but letters and digits removed.
BMS: tuple[Want, ...] = (
    Want("soc_pct", _n("soc", "stateofcharge", "socpct", "batterysoc"), NEEDED, "%", description="State of charge"),
    Want(
        "temperature_max_c",
        _n("temperaturemax", "maxtemperature", "tempmax", "maxtemp", "celltemperaturemax", "maxcelltemperature"),
        NEEDED,
        "°C",
        description="Highest cell temperature",
    ),
    Want(
        "temperature_min_c",
        _n("temperaturemin", "mintemperature", "tempmin", "mintemp", "celltemperaturemin", "mincelltemperature"),
        NEEDED,
        "°C",
        description="Lowest cell temperature",
    ),
    Want(
        "allowed_charge_mw",
        _n("allowedchargepower", "maxchargepower", "chargepowerlimit", "allowedcharge", "chargelimit"),
        NEEDED,
        "kW",
        description="Charge power the BMS allows now",
    ),
    Want(
        "allowed_discharge_mw",
        _n("alloweddischargepower", "maxdischargepower", "dischargepowerlimit", "alloweddischarge", "dischargelimit"),
        NEEDED,
        "kW",
        description="Discharge power the BMS allows now",
    ),
    Want("fault_bits", _n("faultbits", "faults", "faultword", "fault"), USED, description="non-zero = BMS fault"),
    Want("alarm_bits", _n("alarmbits", "alarms", "alarmword", "alarm"), USED, description="any bit set = alarm"),
    Want(
        "heartbeat",
        _n("heartbeat", "watchdog", "lifesign", "lifebit"),
        USED,
        "",
        True,
        (0, 65535),
        "Controller heartbeat",
    ),
    Want("soh_pct", _n("soh", "stateofhealth"), unit="%", description="State of health"),
    Want(
        "voltage_v",
        _n("voltage", "dcvoltage", "busvoltage", "packvoltage"),
        unit="V",
        description="DC bus voltage",
        plausible=(0, 1500),
    ),
    Want(
        "current_a",
        _n("current", "dccurrent", "packcurrent"),
        unit="A",
        description="DC current, + discharge",
        plausible=(-30000, 30000),
    ),
    Want("dc_power_mw", _n("dcpower", "power", "packpower"), unit="kW", description="DC power, + discharge"),
    Want("energy_mwh", _n("energy", "storedenergy", "remainingenergy"), unit="kWh", description="Stored energy"),
)
