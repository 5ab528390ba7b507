"""CPU and memory of a service's containers, from the Engine API's one-shot stats.

``container.stats(stream=False)`` takes about a second (the engine waits for a second
CPU sample), so the calls run in a thread pool: 20 containers take about as long as one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from scaling.decisions import MetricReading


class StatsSource(Protocol):
    id: str

    def stats(self, *, stream: bool) -> Any: ...


@dataclass(frozen=True)
class ContainerUsage:
    container_id: str
    cpu_percent: float | None
    memory_percent: float | None
    error: str = ""


def cpu_percent(stats: dict[str, Any]) -> float | None:
    """Percent of one CPU, as ``docker stats`` shows it: 200 = two full cores.

    Uses ``online_cpus``; ``len(percpu_usage)`` is absent on cgroup v2 and counts offline
    CPUs on v1.
    """
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    try:
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
        online = cpu["online_cpus"]
    except (KeyError, TypeError):
        return None
    if system_delta <= 0 or not online:
        return None
    return max(0.0, cpu_delta / system_delta * online * 100.0)


def memory_percent(stats: dict[str, Any]) -> float | None:
    """Used memory without the page cache (as ``docker stats``), in percent of the limit."""
    memory = stats.get("memory_stats") or {}
    usage, limit = memory.get("usage"), memory.get("limit")
    if not usage or not limit:
        return None
    detail = memory.get("stats") or {}
    # cgroup v1 reports total_inactive_file, v2 inactive_file.
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0
    used = usage - inactive if inactive < usage else usage
    return used / limit * 100.0


def _usage(container: StatsSource) -> ContainerUsage:
    try:
        stats = container.stats(stream=False)
    except Exception as exc:  # one container's failure must not lose the others
        return ContainerUsage(container.id, None, None, f"{type(exc).__name__}: {exc}")
    if not isinstance(stats, dict):
        return ContainerUsage(container.id, None, None, "stats were not a JSON object")
    return ContainerUsage(container.id, cpu_percent(stats), memory_percent(stats))


def gather_usage(containers: Sequence[StatsSource], max_workers: int) -> list[ContainerUsage]:
    """One stats call per container, all at once."""
    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(containers)))) as pool:
        return list(pool.map(_usage, containers))


def average(
    usages: Sequence[ContainerUsage], pick: Callable[[ContainerUsage], float | None], what: str, now: datetime
) -> MetricReading:
    """The mean over containers that reported; missing (with why) when none did."""
    if not usages:
        return MetricReading.missing(f"no running instances to read {what} from")
    values = [value for usage in usages if (value := pick(usage)) is not None]
    if not values:
        errors = sorted({usage.error for usage in usages if usage.error}) or ["the engine returned no samples"]
        return MetricReading.missing(f"no {what} stats from {len(usages)} instance(s): {'; '.join(errors)[:300]}")
    return MetricReading.present(sum(values) / len(values), now)
