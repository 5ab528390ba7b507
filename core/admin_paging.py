"""Deep pages of a big admin list at the cost of a shallow one.

Page 500 of 100,000 sync runs is ``ORDER BY … LIMIT 100 OFFSET 49900``: the database
reads 50,000 whole rows (and joins each to its fabric) to throw 49,900 away.
``DeferredJoinPaginator`` reads a deep page in two steps:

1. the primary keys of the page, ``SELECT id … ORDER BY … LIMIT 100 OFFSET 49900``,
   which an index on the ordering answers from the index alone (no row, no join);
2. the page's rows, ``… WHERE id IN (those 100)``, in the same order, with their joins.

The first ``SHALLOW_ROWS`` rows are paged the plain way: one query is cheaper there.
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet

SHALLOW_ROWS = 1000


class DeferredJoinPaginator(Paginator):
    def page(self, number: Any) -> Page:
        rows = self.object_list
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        if not isinstance(rows, QuerySet) or bottom < SHALLOW_ROWS:
            return super().page(number)
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        ids = list(rows.values_list("pk", flat=True)[bottom:top])
        return Page(rows.filter(pk__in=ids), number, self)
