"""The heal-action registry: what to do for a component that stays UNHEALTHY.

A feature registers its actions from its own app (``sync`` releases expired leases,
``resilience`` restarts containers and worker pools)::

    @heal_action("release_expired_leases", "sync_leases")
    def release_expired_leases(component: str) -> str:
        return "released 2 leases"

An action gets the component's name, returns what it did and raises on failure.
When and how often it may run (backoff, budget, one host at a time) is decided by
``resilience.healing``; the registry holds code only, no state.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

HealFunction = Callable[[str], str]


@dataclass(frozen=True)
class HealAction:
    name: str
    pattern: str  # a component name, or a glob such as "container:*"
    run: HealFunction


_actions: list[HealAction] = []


def heal_action(name: str, pattern: str) -> Callable[[HealFunction], HealFunction]:
    """Register the decorated function as the heal action ``name`` for ``pattern``."""

    def register(function: HealFunction) -> HealFunction:
        _actions[:] = [a for a in _actions if a.name != name]
        _actions.append(HealAction(name, pattern, function))
        return function

    return register


def unregister_action(name: str) -> None:
    _actions[:] = [a for a in _actions if a.name != name]


def action_for(component_name: str) -> HealAction | None:
    return next((a for a in _actions if fnmatch.fnmatchcase(component_name, a.pattern)), None)


def registered_actions() -> list[HealAction]:
    return list(_actions)
