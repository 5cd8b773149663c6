"""Seeded synthetic day-ahead-like price curve: 96 quarter-hour prices per UTC day.

Shape: night trough, morning peak (~08:00), midday solar dip (~13:00), evening peak (~19:00); fat-tailed
Student-t noise (3 degrees of freedom); on "sunny" days (about one in four) the solar dip goes below zero.
Weekends (Saturday, Sunday UTC) run lower and flatter: less industry, so a lower level and a small morning peak.
Same seed and day -> same 96 prices, whatever order the days are asked in.
"""

from __future__ import annotations

import math
import random

from controller.trading.market import PERIOD_S

DAY_S = 86400
PERIODS_PER_DAY = 96
WEEKEND_LEVEL_EUR = 12.0  # how much lower a weekend day's level is
WEEKEND_MORNING_SHARE = 0.4  # a weekend morning peak is this share of a weekday's


def weekday(day_index: int) -> int:
    """Monday 0 ... Sunday 6 of UTC day `day_index` (day 0, 1970-01-01, was a Thursday)."""
    return (day_index + 3) % 7


def is_weekend(day_index: int) -> bool:
    return weekday(day_index) >= 5


def student_t(rng: random.Random, df: float) -> float:
    """A Student-t sample: normal / sqrt(chi2(df) / df)."""
    chi2 = rng.gammavariate(df / 2, 2.0)
    return rng.gauss(0.0, 1.0) / math.sqrt(max(chi2, 1e-12) / df)


def _bump(hour: float, centre: float, width_h: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width_h) ** 2)


class PriceCurve:
    def __init__(self, seed: int = 42, base_eur: float = 85.0, noise_eur: float = 6.0, sunny_share: float = 0.25):
        self.seed = seed
        self.base_eur = base_eur
        self.noise_eur = noise_eur
        self.sunny_share = sunny_share
        self._days: dict[int, list[float]] = {}

    def day(self, day_index: int) -> list[float]:
        """The 96 prices (EUR/MWh, 0.01 resolution) of UTC day `day_index` (Unix seconds // 86400)."""
        if day_index not in self._days:
            rng = random.Random(self.seed * 1_000_003 + day_index)
            level = self.base_eur + rng.gauss(0, 10)
            morning = 35 + rng.gauss(0, 8)
            evening = 60 + rng.gauss(0, 12)
            sunny = rng.random() < self.sunny_share
            if is_weekend(day_index):
                level -= WEEKEND_LEVEL_EUR
                morning *= WEEKEND_MORNING_SHARE
            solar = (level + 25 + abs(rng.gauss(0, 20))) if sunny else (30 + rng.gauss(0, 10))
            prices = []
            for q in range(PERIODS_PER_DAY):
                h = (q + 0.5) / 4
                p = (
                    level
                    - 20 * _bump(h, 3.5, 2.0)
                    + morning * _bump(h, 8.0, 1.3)
                    - solar * _bump(h, 13.0, 2.2)
                    + evening * _bump(h, 19.0, 1.6)
                )
                p += self.noise_eur * student_t(rng, 3.0)
                prices.append(round(p, 2))
            self._days[day_index] = prices
        return self._days[day_index]

    def price(self, delivery_start: float) -> float:
        """Price of the quarter hour that contains `delivery_start` (Unix seconds)."""
        ds = int(delivery_start)
        return self.day(ds // DAY_S)[(ds % DAY_S) // PERIOD_S]
