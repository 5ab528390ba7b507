"""Live state of a fabric's Kubernetes cluster and its drift against Git.

- ``kinds``: the tracked kinds (group, version, kind, plural) and the defaults.
- ``client``: a small Kubernetes REST client on ``core.rpc`` (every call through the
  cluster's shared ``k8s:<host:port>`` breaker), with errors classified like Git's.
- ``state``: the incremental live-state reader (LIST once, then WATCH from the stored
  resourceVersion; relist on 410 Gone), state in and out as JSON-able dicts.
- ``drift``: pure functions comparing desired documents with live objects.

No Celery and no Django models here: the sync stores the state and the report.
"""
