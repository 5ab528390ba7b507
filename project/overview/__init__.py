"""The admin's landing page: what is broken right now, computed when the page is requested.

Nothing here is read from what the tick last wrote about itself: the age of the last
tick, whether the beat entry is enabled, which workers serve which queue, the
components' freshness and the breakers' live state are all judged at request time, so
a stopped tick is exactly what the page shows first (``scheduler.py``). The sections are
plain queries (``sections.py``), the charts are SVG rendered on the server by pygal
from the stored history (``charts.py``), and the worker inspection is a short,
cached broadcast (``workers.py``).
"""
