"""`bess-edge fcr-test`: the FCR prequalification run. It drives the plant simulator's grid frequency through its
control API along a standard test profile, samples the plant's response, and writes a PNG plot (frequency,
required and delivered FCR power, SoC) and a pass/fail summary per step, then one JSON line.

Standard profile (about an hour): 60 s at 50 Hz for the baseline; steps of +-50, +-100 and +-200 mHz, each held
120 s and followed by 120 s back at 50 Hz; then full activation each way for 15 minutes (49.8 Hz, then 50.2 Hz)
with 120 s at 50 Hz after each. `--fast` (tests, a quick look) holds steps `--hold-s` (default 5 s) and full
activation `--full-s` (default 10 s): about a minute and a half.

Per step: *start* is the first sample at which the delivered power has moved a tenth of the step's required
change the right way (due within 2 s); *full* is the first sample within 5 % of the change plus 1 % of the band
of the required power (due within 30 s, and within the hold). A full activation must also stay there for 95 % of
the rest of its hold. Delivered = the plant's power minus its power in the baseline (the run expects no schedule
position meanwhile, as a prequalification test does). The controller must be running with FCR on.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.config import Fcr
from controller.services.fcr import NOMINAL_HZ, response

__all__ = ["Segment", "Sample", "StepResult", "standard_profile", "evaluate", "main_fcr_test"]

START_DUE_S, FULL_DUE_S = 2.0, 30.0
START_SHARE = 0.1  # of the required change: the response has started
FULL_SHARE, FULL_BAND_SHARE = 0.05, 0.01  # within 5 % of the change + 1 % of the band: fully activated
HELD_SHARE = 0.95  # of the samples after full activation within tolerance: sustained


@dataclass(frozen=True)
class Segment:
    name: str
    hz: float
    hold_s: float
    checked: bool = True  # a step whose response is evaluated (the baseline is not)
    sustained: bool = False  # a full activation that must be held to the end


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the run's start
    frequency_hz: float | None
    power_mw: float | None
    soc_pct: float | None
    segment: int


@dataclass
class StepResult:
    name: str
    frequency_hz: float
    required_mw: float
    start_s: float | None
    full_s: float | None
    held_pct: float | None
    passed: bool
    why: str


def standard_profile(fast: bool = False, hold_s: float | None = None, full_s: float | None = None) -> list[Segment]:
    hold = hold_s if hold_s is not None else (5.0 if fast else 120.0)
    full = full_s if full_s is not None else (10.0 if fast else 900.0)
    out = [Segment("baseline 50 Hz", NOMINAL_HZ, 3.0 if fast else 60.0, checked=False)]
    for mhz in (50, 100, 200):
        for sign in (1, -1):
            out.append(Segment(f"step {sign * mhz:+d} mHz", NOMINAL_HZ + sign * mhz / 1000, hold))
            out.append(Segment(f"back to 50 Hz from {sign * mhz:+d} mHz", NOMINAL_HZ, hold))
    for hz, word in ((49.8, "down (discharge)"), (50.2, "up (charge)")):
        out.append(Segment(f"full activation {word}", hz, full, sustained=True))
        out.append(Segment(f"back to 50 Hz after full activation {word.split()[0]}", NOMINAL_HZ, hold))
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _first(samples: list[Sample], t0: float, ok) -> float | None:
    return next((s.t_s - t0 for s in samples if ok(s)), None)


def evaluate(samples: list[Sample], profile: list[Segment], fcr: Fcr) -> list[StepResult]:
    """Pure: the samples of a run against its profile -> one result per checked segment."""
    base = [s.power_mw for s in samples if s.segment == 0 and s.power_mw is not None]
    baseline = sorted(base)[len(base) // 2] if base else 0.0
    results = []
    for i, seg in enumerate(profile):
        mine = [s for s in samples if s.segment == i and s.power_mw is not None]
        if not seg.checked:
            continue
        required = response(seg.hz, fcr).required_mw
        before = response(profile[i - 1].hz, fcr).required_mw if i else 0.0
        change = required - before
        if not mine:
            results.append(StepResult(seg.name, seg.hz, required, None, None, None, False, "no samples"))
            continue
        t0 = mine[0].t_s
        d0 = mine[0].power_mw - baseline
        tol = FULL_SHARE * abs(change) + FULL_BAND_SHARE * fcr.capacity_mw
        sign = 1.0 if change >= 0 else -1.0
        start = _first(mine, t0, lambda s: sign * (s.power_mw - baseline - d0) >= START_SHARE * abs(change) - 1e-9)
        full = _first(mine, t0, lambda s: abs(s.power_mw - baseline - required) <= tol)
        held = None
        if seg.sustained and full is not None:
            after = [s for s in mine if s.t_s - t0 >= full]
            held = 100.0 * sum(abs(s.power_mw - baseline - required) <= tol for s in after) / len(after)
        why = []
        if start is None or start > START_DUE_S:
            why.append(f"start {'never' if start is None else f'{start:.1f} s'} (due within {START_DUE_S:g} s)")
        if full is None or full > FULL_DUE_S:
            why.append(f"full {'never' if full is None else f'{full:.1f} s'} (due within {FULL_DUE_S:g} s)")
        if held is not None and held < 100 * HELD_SHARE:
            why.append(f"held {held:.0f} % of the hold (due {100 * HELD_SHARE:.0f} %)")
        results.append(
            StepResult(
                seg.name, seg.hz, round(required, 6), _r(start), _r(full), _r(held), not why, "; ".join(why) or "ok"
            )
        )
    return results


async def _drive(control_url: str, profile: list[Segment], sample_s: float) -> list[Sample]:
    import httpx

    samples: list[Sample] = []
    async with httpx.AsyncClient(base_url=control_url, timeout=5.0) as http:
        first = (await http.post("/sim/frequency", json={"wander": False, "hz": NOMINAL_HZ})).raise_for_status()
        wander = first.json().get("wander", True)
        t_run = time.monotonic()
        try:
            for i, seg in enumerate(profile):
                (await http.post("/sim/frequency", json={"hz": seg.hz})).raise_for_status()
                print(
                    f"  {time.monotonic() - t_run:7.1f} s  {seg.name}: {seg.hz:.3f} Hz for {seg.hold_s:g} s", flush=True
                )
                end = time.monotonic() + seg.hold_s
                while time.monotonic() < end:  # bounded by the hold
                    st = (await http.get("/sim/state")).raise_for_status().json()
                    meter = st.get("meter") or {}
                    samples.append(
                        Sample(
                            time.monotonic() - t_run,
                            meter.get("frequency_hz"),
                            st.get("power_mw"),
                            st.get("soc_pct"),
                            i,
                        )
                    )
                    await asyncio.sleep(max(0.0, min(sample_s, end - time.monotonic())))
        finally:
            await http.post("/sim/frequency", json={"hz": NOMINAL_HZ, "wander": bool(wander)})
    return samples


def plot(samples: list[Sample], fcr: Fcr, profile: list[Segment], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [s.power_mw for s in samples if s.segment == 0 and s.power_mw is not None]
    baseline = sorted(base)[len(base) // 2] if base else 0.0
    t = [s.t_s for s in samples]
    fig, (ax_f, ax_p, ax_s) = plt.subplots(3, 1, sharex=True, figsize=(11, 8))
    ax_f.plot(t, [s.frequency_hz if s.frequency_hz is not None else math.nan for s in samples], color="tab:blue")
    ax_f.set_ylabel("frequency (Hz)")
    ax_f.axhline(NOMINAL_HZ, color="grey", lw=0.5)
    req = [response(profile[s.segment].hz, fcr).required_mw for s in samples]
    ax_p.step(t, req, where="post", label="required FCR", color="tab:orange")
    got = [s.power_mw - baseline if s.power_mw is not None else math.nan for s in samples]
    ax_p.plot(t, got, label="delivered FCR", color="tab:green")
    ax_p.set_ylabel("power (MW, + discharge)")
    ax_p.legend(loc="upper right")
    ax_s.plot(t, [s.soc_pct if s.soc_pct is not None else math.nan for s in samples], color="tab:purple")
    ax_s.set_ylabel("SoC (%)")
    ax_s.set_xlabel("time since start (s)")
    fig.suptitle(
        f"FCR prequalification run: {fcr.capacity_mw:g} MW band, full activation at ±{fcr.full_activation_mhz:g} mHz"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main_fcr_test(cfg: Any, args: Any) -> int:
    """The command: the site file's services.fcr and simulator control port; returns 0 when every step passed."""
    fcr = cfg.services.fcr
    if fcr.capacity_mw <= 0:
        print("services.fcr.capacity_mw is 0: this site offers no FCR to test", flush=True)
        return 2
    control = args.control_url or f"http://{cfg.simulator.host}:{cfg.simulator.control_port}"
    profile = standard_profile(args.fast, args.hold_s, args.full_s)
    total = sum(s.hold_s for s in profile)
    print(f"FCR test: {fcr.capacity_mw:g} MW band, {len(profile)} segments, about {total / 60:.1f} min, via {control}")
    samples = asyncio.run(_drive(control, profile, args.sample_s))
    results = evaluate(samples, profile, fcr)
    out = Path(args.plot)
    plot(samples, fcr, profile, out)
    for r in results:
        start = "-" if r.start_s is None else f"{r.start_s:.1f} s"
        full = "-" if r.full_s is None else f"{r.full_s:.1f} s"
        verdict = "PASS" if r.passed else f"FAIL ({r.why})"
        print(f"  {r.name:<42} {r.required_mw:+6.2f} MW  start {start:>7}  full {full:>7}  {verdict}")
    passed = all(r.passed for r in results)
    print(
        f"FCR test {'PASSED' if passed else 'FAILED'}: {sum(r.passed for r in results)}/{len(results)} steps; plot {out}"
    )
    summary = {
        "fcr_test": "passed" if passed else "failed",
        "passed": passed,
        "steps": [asdict(r) for r in results],
        "samples": len(samples),
        "duration_s": round(samples[-1].t_s, 1) if samples else 0.0,
        "plot": str(out),
    }
    print(json.dumps(summary), flush=True)
    return 0 if passed else 1
