"""Hypothesis profiles for the unit tests: "ci" (2,000 examples, set when env CI is set) and "dev" (1,000).

CI ran 10,000 until issues 13-15 doubled the property tests; at 2,000 the whole CI stays well inside its 20 minutes
on a 2-core machine (10,000 took the unit tests alone to 8.5 min)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=1_000, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
