"""Fixtures of the chaos suite: a private stack per test, sized from the machine.

Every test here injects a real fault (a killed or stopped server, a killed process, a
cut link) into servers and processes the test started itself, then checks the
invariants in ``tests/chaos/invariants.py`` from the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.chaos.scale import ChaosScale, machine_scale
from tests.chaos.stack import ChaosStack
from tests.conftest import is_postgres, require
from tests.gitrepo import GitRepo, manifest
from tests.pgcluster import unavailable_reason

CHAOS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A scenario's whole-test timeout grows with its size, as its backlog bounds do
    (``ChaosScale.drain``): the full profile's scenarios are four times the ci profile's."""
    factor = machine_scale().factor
    if factor <= 1:
        return
    timeout = int(float(config.getini("timeout") or 300) * factor)
    for item in items:
        if CHAOS_DIR in Path(str(item.fspath)).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(timeout))


@pytest.fixture(scope="session")
def chaos_scale() -> ChaosScale:
    return machine_scale()


@pytest.fixture
def chaos_stack_factory(tmp_path: Path, django_db_blocker: Any) -> Iterator[Callable[..., ChaosStack]]:
    """``chaos_stack_factory(persist_redis=False, **env)``: start a private stack for this test."""
    reason = unavailable_reason()
    require(reason is None, reason or "")
    # The test process reads the stack's PostgreSQL through its own Django connection.
    require(is_postgres(), "the chaos suite needs the test process on PostgreSQL (run through scripts/test.sh)")
    contexts: list[Any] = []

    def start(persist_redis: bool = False, **env: str) -> ChaosStack:
        context = ChaosStack.running(tmp_path / f"stack{len(contexts)}", persist_redis=persist_redis, **env)
        (tmp_path / f"stack{len(contexts)}").mkdir()
        stack = context.__enter__()
        stack.db_blocker = django_db_blocker
        contexts.append(context)
        return stack

    yield start
    for context in reversed(contexts):
        context.__exit__(None, None, None)


@pytest.fixture
def chaos_stack(chaos_stack_factory: Callable[..., ChaosStack]) -> ChaosStack:
    return chaos_stack_factory()


def make_fabrics(stack: ChaosStack, count: int, repos: int = 2, interval: int = 60, files: int = 3) -> list[int]:
    """``count`` fabrics over ``repos`` real Git repositories, all due now."""
    from sync.models import Fabric

    sources = []
    for index in range(repos):
        repo = GitRepo.create(stack.repos / f"fabric-repo-{index}")
        for number in range(files):
            repo.write(f"fabric/switch-{number}.yaml", manifest("Switch", f"leaf-{index}-{number}", role="leaf"))
        repo.commit("initial wiring")
        sources.append(repo)
    with stack.orm():
        due = timezone.now() - timedelta(seconds=1)
        created = Fabric.objects.bulk_create(
            Fabric(
                name=f"chaos-{number:05d}",
                git_url=sources[number % repos].url,
                git_branch="main",
                git_path="fabric",
                sync_interval=interval,
                next_sync_at=due,
            )
            for number in range(count)
        )
        return [fabric.id for fabric in created]
