"""URL routes: the admin at ``/admin/``, health at ``/health/``, Prometheus metrics at ``/metrics``."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from resilience.views import metrics

admin.site.site_header = "Fabric control plane"
admin.site.site_title = "Fabric control plane"
admin.site.index_title = "Fabrics, scaling and health"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", include("project.overview.urls")),  # the landing page; before the admin's own routes
    path("admin/", admin.site.urls),
    path("health/", include("resilience.urls")),
    path("hooks/", include("sync.urls")),
    path("metrics", metrics, name="metrics"),
    path("api/", include("project.api.urls")),  # the JSON API (docs/api.md)
]
