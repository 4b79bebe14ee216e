"""Fuzzing the decoders of untrusted input, bounded in time.

Every property test in this folder runs under the Hypothesis profile ``wiremesh-fuzz``,
registered here and applied by each test module (``@FUZZ``, where ``FUZZ =
settings.get_profile("wiremesh-fuzz")``) rather than loaded globally, so that the rest of
the suite keeps its own settings:

- ``max_examples``: ``WIREMESH_FUZZ_EXAMPLES`` (default 60), per test; with the default
  the folder takes about 12 s on two cores. ``WIREMESH_FUZZ_EXAMPLES=5000 pytest
  tests/fuzz`` fuzzes for longer on a workstation. The scenarios that run an event loop
  per example (a link, a gateway stream, the broker) use ``wiremesh-fuzz-scenarios``,
  the same with half the examples.
- ``deadline``: one example may take 5 s (they take milliseconds; CI machines are
  shared): a decoder that goes quadratic fails instead of stalling the suite (one that
  hangs for good meets pytest-timeout).
- under ``CI=true``: ``derandomize=True`` (the same examples on every run, so a red CI is
  reproducible), no example database, and no shrinking (shrinking a failure of the
  scenarios that run an event loop per example can take minutes: run the test again
  locally, where it shrinks, to get the smallest example).

Shared pieces (strategies, the in-memory stream, the allocation probe) live in
``fuzzing.py`` beside this file.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_REPRODUCIBLE: dict[str, Any] = {
    "derandomize": True,
    "database": None,
    "phases": [Phase.explicit, Phase.generate],
}

EXAMPLES = int(os.environ.get("WIREMESH_FUZZ_EXAMPLES", "60"))

settings.register_profile(
    "wiremesh-fuzz",
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    **(_REPRODUCIBLE if IN_CI else {}),
)
settings.register_profile(
    "wiremesh-fuzz-scenarios",
    settings.get_profile("wiremesh-fuzz"),
    max_examples=max(10, EXAMPLES // 2),
)
