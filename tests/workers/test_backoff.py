"""Send retries back off exponentially, with jitter."""

from __future__ import annotations

import random

from workers.tasks import backoff_s


def test_backoff_doubles_per_attempt_within_its_jitter() -> None:
    rng = random.Random(3)
    for attempts, centre in ((1, 10.0), (2, 20.0), (3, 40.0), (5, 160.0)):
        delays = [backoff_s(10.0, attempts, rng) for _ in range(200)]
        assert all(0.75 * centre <= d <= 1.25 * centre for d in delays)
        assert max(delays) - min(delays) > 0.3 * centre  # spread out, not one instant
