"""The SQL due query agrees with the Python statement of the rule, on generated fabrics.

``sync.leases.due_fabrics`` is what the tick runs; ``sync.scheduling.fabric_needs_sync``
is the same rule written for one fabric. Hypothesis generates fabrics around the
boundaries (exactly due, a microsecond early, leases expiring at ``now``, disabled,
suspended) and every generated set must select the same rows on the real database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.leases import due_fabrics
from sync.models import Fabric, SyncStatus
from sync.scheduling import fabric_needs_sync

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

# Offsets from NOW that sit on and around every boundary the rule has.
offsets = st.one_of(
    st.sampled_from([0, -1, 1, -60, 60]).map(lambda s: timedelta(seconds=s)),
    st.sampled_from([-1, 1]).map(lambda us: timedelta(microseconds=us)),
    st.integers(-7200_000_000, 7200_000_000).map(lambda us: timedelta(microseconds=us)),
)

fabric_states = st.fixed_dictionaries(
    {
        "sync_enabled": st.booleans(),
        "sync_status": st.sampled_from(list(SyncStatus)),
        "next_sync_at": offsets,
        "lease_expires_at": st.one_of(st.none(), offsets),
    }
)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(states=st.lists(fabric_states, min_size=1, max_size=12), now_shift=offsets)
def test_the_due_query_selects_exactly_the_fabrics_the_rule_says_are_due(states, now_shift) -> None:
    Fabric.objects.all().delete()
    fabrics = Fabric.objects.bulk_create(
        Fabric(
            name=f"f{i}",
            git_url="/x",
            sync_enabled=state["sync_enabled"],
            sync_status=state["sync_status"],
            next_sync_at=NOW + state["next_sync_at"],
            lease_expires_at=None if state["lease_expires_at"] is None else NOW + state["lease_expires_at"],
        )
        for i, state in enumerate(states)
    )
    now = NOW + now_shift
    expected = {f.name for f in fabrics if fabric_needs_sync(f, now)}
    assert set(due_fabrics(now).values_list("name", flat=True)) == expected
