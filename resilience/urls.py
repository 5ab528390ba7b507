from django.urls import path

from resilience import views

app_name = "health"

urlpatterns = [
    path("", views.full, name="full"),
    path("live", views.live, name="live"),
    path("ready", views.ready, name="ready"),
]
