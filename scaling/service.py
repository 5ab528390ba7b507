"""AutoScalingService: evaluate a service, act on the decision, and record every decision.

The tick's per-policy task calls ``run``: under the per-service lock it evaluates
(instances from the engine, metrics, the pure decision) and executes. Every decision
becomes a ``ScalingEvent``, "no change" included, with the metrics snapshot and the
rule that decided it. Nothing here raises into its caller for a Docker, metric or
policy problem: those are recorded as failed events with a readable reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from core.redaction import redact
from scaling import locks, metrics
from scaling.actions import Outcome, scale_down, scale_up
from scaling.decisions import Decision, Rule, ScaleDirection, direction_between
from scaling.docker_backend import DockerBackend, EngineUnreachable
from scaling.models import ScalingEvent, ScalingPolicy, ScalingTrigger
from scaling.planning import cooldown_remaining, plan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScalingDecision:
    """A decision about one service, with what executing it needs."""

    service: str
    policy_id: int | None
    decision: Decision
    dry_run: bool
    trigger: str = ScalingTrigger.TICK
    error: str = ""  # the evaluation itself failed: engine unreachable, invalid policy
    cpu_by_container: Mapping[str, float] = field(default_factory=dict)

    @property
    def direction(self) -> ScaleDirection:
        return self.decision.direction


def held(service: str, rule: Rule, reason: str, current: int = 0) -> Decision:
    return Decision(service, ScaleDirection.NONE, current, current, current, str(rule), reason)


def readable(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        parts = [
            f"{'' if name == '__all__' else name + ': '}{' '.join(m for e in errs for m in e.messages)}"
            for name, errs in exc.error_dict.items()
        ]
        return "; ".join(parts)
    return " ".join(exc.messages)


class AutoScalingService:
    def __init__(
        self,
        backend_factory: Callable[[], DockerBackend] = DockerBackend,
        clock: Callable[[], datetime] = timezone.now,
        celery_app: Any = None,
    ) -> None:
        self.backend_factory = backend_factory
        self.clock = clock
        if celery_app is None:
            from project.celery_app import app as celery_app
        self.celery_app = celery_app

    # --- The tick's entry point ----------------------------------------------------------
    def run(self, service: str, trigger: str = ScalingTrigger.TICK, force_dry_run: bool = False) -> dict[str, Any]:
        """Evaluate and execute under the per-service lock; a held lock means another run acts."""
        with locks.service_lock(service) as token:
            if token is None:
                return {"service": service, "skipped": "another evaluation of this service holds its lock"}
            try:
                decision = self.evaluate(service, trigger=trigger, force_dry_run=force_dry_run)
            except ScalingPolicy.DoesNotExist:
                return {"service": service, "skipped": "no such policy"}
            except Exception as exc:  # a bug or a database error: record it, then let Celery see it
                logger.exception("evaluating %s failed", service)
                reason = held(service, Rule.EVALUATION_ERROR, "evaluation failed")
                failed = ScalingDecision(service, None, reason, False)
                with contextlib.suppress(Exception):  # the database may be what failed
                    self._record(failed, Outcome(0, False, error=redact(f"{type(exc).__name__}: {exc}")))
                raise
            event = self.execute(decision)
            return {
                "service": service,
                "action": event.action,
                "from": event.from_instances,
                "to": event.to_instances,
                "rule": event.rule,
                "success": event.success,
                "event_id": event.pk,
            }

    # --- Evaluate --------------------------------------------------------------------------
    def evaluate(
        self, service: str, *, trigger: str = ScalingTrigger.TICK, force_dry_run: bool = False
    ) -> ScalingDecision:
        """Decide what ``service`` should run now.

        1. Load the policy; an invalid one (edited around validation) becomes a held
           decision whose reason lists what is wrong.
        2. Read the instance count from the engine, every time, and remember it on the
           policy for the admin; an unreachable engine (or an open breaker) reads as 0
           instances with the reason, and nothing will be done.
        3. Gather the metrics the policy targets (Docker stats concurrently).
        4. Decide with the stabilisation history and cooldown from the database, and
           record this recommendation (``scaling.planning.plan``).
        """
        policy = ScalingPolicy.objects.get(service=service)
        dry_run = policy.dry_run or force_dry_run
        now = self.clock()
        try:
            policy.full_clean()
        except ValidationError as exc:
            reason = f"invalid policy: {readable(exc)}"
            decision = held(service, Rule.INVALID_POLICY, reason)
            return ScalingDecision(service, policy.pk, decision, dry_run, trigger, reason)
        with self.backend_factory() as backend:
            try:
                containers = backend.list_instances(service)
            except EngineUnreachable as exc:
                reason = str(exc)
                decision = held(service, Rule.ENGINE_UNREACHABLE, f"{reason}; no action taken")
                return ScalingDecision(service, policy.pk, decision, dry_run, trigger, reason)
            policy.observe(len(containers), now)
            gathered = metrics.gather(policy, backend.stats_sources(containers), now)
        decision = plan(policy, len(containers), gathered.readings, now)
        return ScalingDecision(service, policy.pk, decision, dry_run, trigger, "", gathered.cpu_by_container)

    # --- Execute ---------------------------------------------------------------------------
    def execute(self, decision: ScalingDecision) -> ScalingEvent:
        """Act on ``decision`` and record it as an event.

        1. A failed evaluation is recorded as such; nothing is done.
        2. No change, or a dry run, is recorded; nothing is done.
        3. Otherwise re-read the owned instances (the engine is the truth) and start or
           stop instances towards the target (``scaling.actions``).
        4. Record the outcome: the count after acting, what started, stopped or failed,
           and remember that count on the policy.
        """
        current = decision.decision.current
        if decision.error:
            return self._record(decision, Outcome(current, False, error=decision.error))
        if decision.direction == ScaleDirection.NONE or decision.dry_run:
            to = decision.decision.target if decision.dry_run else current
            return self._record(decision, Outcome(to, True))
        try:
            policy = ScalingPolicy.objects.get(service=decision.service)
            with self.backend_factory() as backend:
                containers = backend.list_instances(decision.service)
                target = min(max(decision.decision.target, policy.min_instances), policy.max_instances)
                if target > len(containers):
                    outcome = scale_up(backend, policy, len(containers), target)
                elif target < len(containers):
                    outcome = scale_down(
                        backend, policy, containers, target, decision.cpu_by_container, self.celery_app
                    )
                else:
                    outcome = Outcome(len(containers), True, details={"note": "already at target"})
            policy.observe(outcome.to_instances, self.clock())
        except EngineUnreachable as exc:
            outcome = Outcome(current, False, error=f"{exc}; no action taken", rule=str(Rule.ENGINE_UNREACHABLE))
        except Exception as exc:
            logger.exception("scaling %s failed", decision.service)
            outcome = Outcome(current, False, error=redact(f"{type(exc).__name__}: {exc}"))
        return self._record(decision, outcome)

    def _record(self, decision: ScalingDecision, outcome: Outcome) -> ScalingEvent:
        d = decision.decision
        reason = d.reason if not outcome.rule else f"{d.reason}; stopped short by {outcome.rule}"
        event = ScalingEvent.objects.create(
            service=decision.service,
            policy_id=decision.policy_id,
            action=d.direction,
            from_instances=d.current,
            desired_instances=d.recommended,
            to_instances=outcome.to_instances,
            reason=reason,
            metrics=d.metrics,
            rule=outcome.rule or d.rule,
            success=outcome.success,
            error=outcome.error,
            dry_run=decision.dry_run,
            trigger=decision.trigger,
            details=outcome.details,
            created_at=self.clock(),
        )
        log = logger.info if outcome.success else logger.warning
        log(
            "scaling %s: %s %d→%d (%s)%s",
            event.service,
            event.action,
            event.from_instances,
            event.to_instances,
            event.rule,
            f" error: {event.error}" if event.error else "",
        )
        return event

    # --- Manual scaling ---------------------------------------------------------------------
    def scale_to(
        self, service: str, count: int, trigger: str = ScalingTrigger.MANUAL, dry_run: bool = False
    ) -> ScalingEvent | None:
        """Scale ``service`` to ``count`` now (within [min, max]); None when its lock is held."""
        policy = ScalingPolicy.objects.get(service=service)
        with locks.service_lock(service) as token:
            if token is None:
                return None
            with self.backend_factory() as backend:
                try:
                    current = len(backend.list_instances(service))
                except EngineUnreachable as exc:
                    decision = held(service, Rule.ENGINE_UNREACHABLE, f"{exc}; no action taken")
                    failed = ScalingDecision(service, policy.pk, decision, dry_run, trigger, str(exc))
                    return self._record(failed, Outcome(0, False, error=str(exc)))
            policy.observe(current, self.clock())
            target = min(max(count, policy.min_instances), policy.max_instances)
            rule, reason = str(Rule.MANUAL), f"operator asked for {count} instance(s)"
            if target != count:
                rule = str(Rule.MIN_INSTANCES if target > count else Rule.MAX_INSTANCES)
                reason = f"{reason}; limited to [{policy.min_instances}, {policy.max_instances}]: {target}"
            decision = Decision(service, direction_between(current, target), current, target, target, rule, reason)
            return self.execute(ScalingDecision(service, policy.pk, decision, dry_run or policy.dry_run, trigger))

    # --- Reading ---------------------------------------------------------------------------
    def get_current_status(self) -> dict[str, Any]:
        """Services, instance counts (one engine call), targets, cooldowns and recent events."""
        now = self.clock()
        engine: dict[str, Any] = {"reachable": True, "error": ""}
        counts: dict[str, int] = {}
        try:
            with self.backend_factory() as backend:
                counts = backend.count_by_service()
        except EngineUnreachable as exc:
            engine = {"reachable": False, "error": str(exc)}
        services = []
        for policy in ScalingPolicy.objects.all():
            last = ScalingEvent.objects.filter(service=policy.service).first()
            services.append(
                {
                    "service": policy.service,
                    "enabled": policy.enabled,
                    "dry_run": policy.dry_run,
                    "instances": counts.get(policy.service, 0) if engine["reachable"] else None,
                    "min_instances": policy.min_instances,
                    "max_instances": policy.max_instances,
                    "thresholds": policy.targets(),
                    "queues": list(policy.queues or []),
                    "cooldown_remaining": round(cooldown_remaining(policy, now), 1),
                    "last_event": last.as_dict() if last else None,
                }
            )
        return {
            "at": now.isoformat(),
            "engine": engine,
            "services": services,
            "recent_events": self.get_scaling_history(10),
        }

    def get_scaling_history(self, n: int = 20, service: str | None = None) -> list[dict[str, Any]]:
        """The last ``n`` events, newest first."""
        events = ScalingEvent.objects.all()
        if service:
            events = events.filter(service=service)
        return [event.as_dict() for event in events[: max(0, n)]]
