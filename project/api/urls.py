"""The API's routes under ``/api/`` (docs/api.md)."""

from django.urls import path

from project.api import views

app_name = "api"

urlpatterns = [
    path("fabrics/", views.fabrics, name="fabrics"),
    path("fabrics/<int:fabric_id>/", views.fabric, name="fabric"),
    path("fabrics/<int:fabric_id>/sync/", views.sync_fabric, name="fabric-sync"),
    path("runs/<int:run_id>/", views.run, name="run"),
    path("scaling/", views.scaling, name="scaling"),
    path("health/", views.health, name="health"),
]
