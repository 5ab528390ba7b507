"""The overview's routes, under ``/admin/`` before the admin's own (``project/urls.py``)."""

from django.urls import path

from project.overview import views

urlpatterns = [
    path("", views.index, name="overview"),
    path("overview/scheduler/", views.toggle_scheduler, name="overview-scheduler"),
]
