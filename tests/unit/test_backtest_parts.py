"""The backtest's parts (controller/backtest/): the naive rule's choice of periods, the in-process market's
determinism and bookkeeping, the plant's imbalance, and perfect foresight as an upper bound of its own plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.backtest.market import SimMarket
from controller.backtest.plant import Plant
from controller.backtest.strategies import NaiveStrategy, View, perfect_foresight
from controller.config import load_config
from controller.trading.auto import OrderIntent
from controller.trading.forecast import Forecast, ForecastPeriod

ROOT = Path(__file__).resolve().parents[2]
DAY0 = 20_394 * 86400  # 2025-11-03, a Monday, 00:00 UTC


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config" / "demo.yaml")


def test_the_naive_rule_charges_in_the_cheapest_and_discharges_in_the_dearest_periods(cfg):
    naive = NaiveStrategy(cfg)
    assert naive.k == 6  # 16 MWh of window / (10 MW x 0.25 h / 0.95) per discharging period
    prices = [50.0 + (q % 96) for q in range(144)]  # dearer through the day
    fc = Forecast(DAY0, "test", tuple(ForecastPeriod(DAY0 + q * 900, p, "known") for q, p in enumerate(prices)))
    plan = naive.plan(View(DAY0, fc, {}, 50.0))
    assert len(plan) == 96  # today only
    assert [plan[DAY0 + q * 900] for q in range(6)] == [-10.0] * 6
    assert [plan[DAY0 + q * 900] for q in range(90, 96)] == [10.0] * 6
    assert sum(1 for v in plan.values() if v == 0) == 96 - 12
    assert naive.plan(View(DAY0 + 3600, fc, {}, 20.0)) is plan  # fixed for the day


def test_the_market_is_the_same_for_the_same_seed_and_keeps_the_sites_books(cfg):
    def run(seed: int) -> tuple[dict, list]:
        m = SimMarket(seed, 8, DAY0)
        fills = []
        for i in range(180):  # an hour of 20 s ticks
            now = DAY0 + 20 * i
            m.tick(now)
            if i == 3:
                p = float(DAY0 + 2 * 3600)
                assert m.place(OrderIntent("sell", 2.0, m.curve.price(p) - 5, p, "test"), now) in ("open", "filled")
                assert m.place(OrderIntent("buy", 1.0, 1.0, p + 900, "test"), now) == "open"
            fills += m.new_fills()
        return dict(m.realised), fills, m.open_orders()

    a, b = run(7), run(7)
    assert a[0] == b[0] and a[1] == b[1]
    # gate closure 5 min before delivery: by 00:59:40 the periods 00:00 to 01:00 are closed, each with its price
    assert sorted(a[0]) == [DAY0 + q * 900 for q in range(5)] and all(abs(v) < 1000 for v in a[0].values())
    assert run(8)[0] != a[0]
    realised, fills, open_orders = a
    assert sum(mw for _, mw, _ in fills) == pytest.approx(2.0)  # the sell below the market filled, all of it
    assert [(o.side, o.remaining_mw) for o in open_orders] == [("buy", 1.0)]  # the buy at 1 EUR/MWh rests


def test_the_market_publishes_tomorrows_auction_at_11(cfg):
    m = SimMarket(3, 0, DAY0)
    assert max(m.known) == DAY0 + 86400 - 900  # today's results (published yesterday), not tomorrow's
    m.tick(DAY0 + 11 * 3600)
    assert max(m.known) == DAY0 + 2 * 86400 - 900
    assert m.known[DAY0 + 86400] == m.curve.price(DAY0 + 86400)


def test_the_plant_records_what_it_could_not_deliver(cfg):
    plant = Plant(cfg, soc_pct=11.0)
    for i in range(45):  # 10 MW sold for a period from 11 %: the SoC floor and taper stop it early
        plant.deliver(10.0, DAY0, DAY0 + 20 * i, 20.0)
    assert plant.soc_pct >= cfg.limits.soc_min_pct - 1e-9
    short = plant.deviation_mwh[DAY0]
    assert 0 < short <= 2.5 and plant.throughput_mwh == pytest.approx(2.5 - short)


def test_perfect_foresight_is_the_optimiser_on_the_realised_prices(cfg):
    prices = [40.0] * 24 + [120.0] * 24
    plan = perfect_foresight(cfg, DAY0, prices, 50.0, 60.0)
    assert plan.ok
    assert all(q.plan_mw <= 0 for q in plan.periods[:24]) and all(q.plan_mw >= 0 for q in plan.periods[24:])
    assert plan.throughput_mwh > 20  # fills the battery cheap, empties it dear
