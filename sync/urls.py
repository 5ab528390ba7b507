"""Sync's HTTP endpoints, below ``/hooks/``: the Git push webhook (``sync.webhook_views``)."""

from django.urls import path

from sync import webhook_views

app_name = "hooks"

urlpatterns = [
    path("git/", webhook_views.git_push, name="git"),
    # Without the slash too: a forge does not follow the redirect APPEND_SLASH would send.
    path("git", webhook_views.git_push),
]
