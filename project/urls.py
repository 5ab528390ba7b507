"""URL routes: the admin at the root of ``/admin/``; later issues add ``/health/``."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "Fabric control plane"
admin.site.site_title = "Fabric control plane"
admin.site.index_title = "Fabrics, scaling and health"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("health/", include("resilience.urls")),
]
