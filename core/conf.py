"""Tuning defaults of the platform core. Deployment settings live in ``project/settings.py``.

Every name here is a Django setting (``project/settings.py`` loads this module). Only
the values an operator may want to turn read the environment; the rest derive from
``TICK_SECONDS`` so the period is written once.
"""

from core.env import env_float

# The master tick's period. Beat fires it; everything that counts ticks derives from it.
TICK_SECONDS = 60

# Circuit breakers: thresholds are BreakerConfig's defaults (core/breaker_core.py, with
# their sources); only the time a breaker stays OPEN before trial calls is a knob.
BREAKER_WAIT_SECONDS = env_float("BREAKER_WAIT_SECONDS", 30.0)
