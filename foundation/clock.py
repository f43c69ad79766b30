"""Wall-clock time as the rest of Relance counts it: UTC epoch milliseconds."""
from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
