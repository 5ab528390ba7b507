"""How big each chaos scenario is on this machine: one place, sized from the host.

Sizes scale with the host (cores, memory) and ``CHAOS_SCALE`` (a multiplier); the
invariants never do. ``CHAOS_PROFILE`` picks the bounded profile ``make test`` and CI
run (``ci``, the default) or the heavier one ``make chaos`` runs (``full``: more
fabrics, more rounds, more restarts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 4.0


@dataclass(frozen=True)
class ChaosScale:
    profile: str
    factor: float  # 1.0 on a 2-core, 8 GiB host in the ci profile

    def n(self, base: int, minimum: int = 1) -> int:
        """``base`` items on the reference host, scaled to this one."""
        return max(minimum, round(base * self.factor))

    def drain(self, seconds: float) -> float:
        """A bound for working off a backlog: ``seconds`` on the reference host, times the
        backlog's growth. The worker count stays, so a backlog ``factor`` times the size
        takes ``factor`` times as long; the bounds of recovering from a fault (leases,
        ticks, detection) are never scaled."""
        return seconds * max(1.0, self.factor)

    @property
    def fabrics(self) -> int:
        return self.n(20, minimum=4)

    @property
    def workers(self) -> int:
        return self.n(2, minimum=2)

    @property
    def rounds(self) -> int:
        return self.n(3, minimum=2)


def machine_scale() -> ChaosScale:
    profile = os.environ.get("CHAOS_PROFILE", "ci")
    if profile not in {"ci", "full"}:
        raise ValueError(f"CHAOS_PROFILE must be 'ci' or 'full', not {profile!r}")
    cores = os.cpu_count() or 2
    host = min(cores / 2, _memory_gib() / 8)
    factor = max(0.5, host) * (4.0 if profile == "full" else 1.0)
    factor *= float(os.environ.get("CHAOS_SCALE", "1"))
    return ChaosScale(profile, factor)
