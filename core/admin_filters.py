"""List filters whose cost does not grow with the table they filter.

Django's stock filters read the table to draw themselves: a foreign-key filter lists
every related row (10,000 fabric links in a sync run's sidebar), a field filter runs
``SELECT DISTINCT`` over the whole table, and ``date_hierarchy`` truncates and
de-duplicates every row's date. At 100,000 rows each costs tens of milliseconds and
the first one most of a megabyte of HTML. These answer the same questions in constant
time:

- ``TextFilter``: a box to type a value into (a fabric's name) instead of a list of links.
- ``DistinctValuesFilter``: a field's few distinct values (kinds, rules) read by a loose
  index scan: one index probe per value, not a pass over every row.
- ``recent_filter``: "in the last hour / day / week / 30 days" instead of a date drill-down;
  an indexed range, and drawing it reads nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db import connections
from django.db.models import Field, Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone

# More distinct values than this, and a list of links stops being the right control.
MAX_VALUES = 100


class TextFilter(admin.SimpleListFilter):
    """A text box in the sidebar: the rows whose ``lookup`` equals what was typed."""

    template = "admin/core/text_filter.html"
    lookup = ""  # e.g. "fabric__name"
    placeholder = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = (self.value() or "").strip()
        return queryset.filter(**{self.lookup: value}) if value else queryset

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        name, current = str(self.parameter_name), self.value() or ""
        yield {"selected": not current, "query_string": changelist.get_query_string(remove=[name]), "display": "All"}
        # The box submits the list's other parameters (search, ordering, other filters) with it.
        hidden = [
            (key, value)
            for key, values in changelist.filter_params.items()
            if not key.startswith(name)
            for value in values
        ]
        yield {"form": True, "name": name, "value": current, "placeholder": self.placeholder, "hidden": hidden}


def distinct_values(model: type[Model], field_name: str, using: str = "default", limit: int = MAX_VALUES) -> list[Any]:
    """The distinct values of an indexed column, in order, by a loose index scan.

    1. Take the smallest value (``MIN`` reads one index entry).
    2. Take the smallest value greater than the last one found; repeat until none.
    So the cost is one index probe per distinct value, whatever the number of rows.
    The column needs an index (a plain one, or the leading column of one).
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    field = model._meta.get_field(field_name)
    assert isinstance(field, Field), f"{field_name} is not a column"
    table, column = quote(model._meta.db_table), quote(field.column)
    # Identifiers come from the model's metadata, never from a request.
    sql = (
        f"WITH RECURSIVE found(value) AS ("  # noqa: S608
        f" SELECT MIN({column}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > found.value)"
        f" FROM found WHERE found.value IS NOT NULL"
        f") SELECT value FROM found WHERE value IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


class DistinctValuesFilter(admin.SimpleListFilter):
    """The values of ``field`` as links, like Django's field filter, read by ``distinct_values``."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        model = model_admin.model
        values = distinct_values(model, self.field, using=model_admin.get_queryset(request).db)
        return [(str(v), str(v) or "(empty)") for v in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value is not None else queryset


RECENT_WINDOWS: list[tuple[str, str, timedelta]] = [
    ("1h", "Last hour", timedelta(hours=1)),
    ("24h", "Last 24 hours", timedelta(hours=24)),
    ("7d", "Last 7 days", timedelta(days=7)),
    ("30d", "Last 30 days", timedelta(days=30)),
]


def recent_filter(field: str, title: str = "when") -> type[admin.SimpleListFilter]:
    """A filter class for rows whose ``field`` lies in the last hour, day, week or 30 days."""
    windows = {key: span for key, _, span in RECENT_WINDOWS}

    class RecentFilter(admin.SimpleListFilter):
        parameter_name = f"{field}_within"

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(key, label) for key, label, _ in RECENT_WINDOWS]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            span = windows.get(self.value() or "")
            return queryset.filter(**{f"{field}__gte": timezone.now() - span}) if span else queryset

    RecentFilter.title = title
    RecentFilter.__name__ = RecentFilter.__qualname__ = f"Recent_{field}_Filter"
    return RecentFilter
