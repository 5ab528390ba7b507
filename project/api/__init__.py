"""A small JSON API over plain Django views: fabrics and "Sync now", runs, scaling, health.

``auth.py`` decides who may call (staff session or ``API_TOKEN``), ``shapes.py`` turns
rows into JSON, ``views.py`` holds the endpoints; docs/api.md documents them.
"""
