"""The prune guard: which unmanaged objects a prune may delete now, as a pure function.

An emptied folder, a wrong ``git_path`` or a bad merge makes every live object look
unmanaged; a prune that believes it deletes the fabric (Argo CD #2573). So, for a
fabric in reconcile mode with prune enabled:

1. The candidates are the unmanaged objects of the drift report (live, in a managed
   namespace, of a tracked kind, not in Git, not left out by an ignore rule).
2. "Delete everything" (Git has no object in scope while the cluster has some) is
   always refused, whatever the share allows.
3. Deleting more than ``max_share`` of the live objects in scope is refused.
4. A refused prune waits for an operator: its objects are recorded (``pending``) with
   the time of the refusal. A confirmation given after that refusal lets the next sync
   delete them, once, and only if it would delete no object the operator did not see
   (the candidates are a subset of ``pending``); otherwise it is refused again, anew.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sync.live.drift import DRIFTED, IN_SYNC, MISSING, UNMANAGED, DriftReport, ObjectDrift


@dataclass(frozen=True)
class PruneDecision:
    delete: list[ObjectDrift] = field(default_factory=list)
    refused: str = ""  # why the candidates wait for an operator; empty when nothing waits
    pending: list[str] = field(default_factory=list)  # the refused candidates, for the operator to see
    used_confirmation: bool = False

    @property
    def waiting(self) -> bool:
        return bool(self.refused)


def decide_prune(report: DriftReport, *, max_share: float, pending: list[str], confirmed: bool) -> PruneDecision:
    """Steps 1-4 of the module docstring. ``confirmed``: an operator confirmed ``pending``
    after it was refused (``FabricCluster.prune_confirmed``)."""
    candidates = report.of_state(UNMANAGED)
    if not candidates:
        return PruneDecision()
    counts = report.counts
    live_total = counts[IN_SYNC] + counts[DRIFTED] + counts[UNMANAGED]
    desired_total = counts[IN_SYNC] + counts[DRIFTED] + counts[MISSING]
    names = [str(c.key) for c in candidates]
    if desired_total == 0:
        reason = (
            f"Git has no object for this fabric's kinds and namespaces while the cluster has {live_total}: "
            "a prune would delete everything (an emptied folder or a wrong Git path?)"
        )
    elif len(candidates) > max_share * live_total:
        reason = (
            f"a prune would delete {len(candidates)} of {live_total} live objects "
            f"({len(candidates) / live_total:.0%}), more than the allowed {max_share:.0%}"
        )
    else:
        return PruneDecision(delete=candidates)
    if confirmed and set(names) <= set(pending):
        return PruneDecision(delete=candidates, used_confirmation=True)
    return PruneDecision(refused=f"{reason}; waiting for an operator's confirmation", pending=names)
