"""Hypothesis profiles for the unit tests: "ci" (10,000 examples, set when env CI is set) and "dev" (1,000)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=1_000, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
