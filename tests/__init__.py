"""
mailframe's tests (twisted.trial).

Hypothesis runs under one profile, ``ci`` unless HYPOTHESIS_PROFILE names
another: no deadline and no "too slow" health check, since the suite runs
two jobs on a two-core machine beside real servers, where generating an
input can take a second without anything being wrong.
"""

import os

try:
    from hypothesis import HealthCheck, settings
    from hypothesis.errors import InvalidArgument
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    try:
        settings.get_profile("ci")
    except InvalidArgument:
        settings.register_profile(
            "ci",
            deadline=None,
            max_examples=200,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
