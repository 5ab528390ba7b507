"""The admin of shared platform records: credentials, whose secret is write-only.

The secret is typed into a password box that never renders a value back; a blank
box on edit keeps the stored secret. No list column, search field, read-only field,
``str`` or message ever shows the secret or its ciphertext: operators see the name,
kind, user name and when the secret was set. Setting it needs the change permission;
view-only staff get the same page without the box.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count, ForeignObjectRel, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.utils import timezone

from core.credentials import CredentialError
from core.display import AdminListMixin, stamp
from core.models import Credential


class CredentialForm(forms.ModelForm):
    secret = forms.CharField(
        label="Secret (token or password)",
        required=False,
        strip=False,
        # render_value=False: a submitted or stored value never goes back into the HTML.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "size": 60}),
        help_text="Write-only: never shown again. Leave blank to keep the current secret.",
    )

    class Meta:
        model = Credential
        fields = ["name", "kind", "username", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2, "cols": 80})}

    def clean_secret(self) -> str:
        value: str = self.cleaned_data.get("secret") or ""
        if not value and not self.instance.pk:
            raise ValidationError("A new credential needs its secret.")
        if any(c in value for c in "\r\n\0"):
            # It ends up in an HTTP header: a line break would let it add headers of its own.
            raise ValidationError("The secret may not contain line breaks or NUL characters.")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        username = cleaned.get("username") or ""
        if cleaned.get("kind") == Credential.Kind.HTTPS_TOKEN and ":" in username:
            self.add_error("username", "A user name for HTTP Basic authentication cannot contain ':'.")
        if any(c in username for c in "\r\n\0"):
            self.add_error("username", "The user name may not contain line breaks or NUL characters.")
        if secret := cleaned.get("secret"):
            # Encrypt here, not in save(): a broken CREDENTIALS_KEYS is then a form error, not a 500.
            try:
                self.instance.set_secret(secret, timezone.now())
            except CredentialError as exc:  # the message names the key's position, never a secret
                self.add_error("secret", str(exc))
        return cleaned


def uses(rel: ForeignObjectRel) -> Coalesce:
    """How many rows of ``rel``'s model point at the credential (0 for none)."""
    related = rel.related_model
    assert not isinstance(related, str)
    field = rel.field.name
    rows = related._default_manager.filter(**{field: OuterRef("pk")}).order_by().values(field)
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n")), 0)


@admin.register(Credential)
class CredentialAdmin(AdminListMixin, admin.ModelAdmin):
    form = CredentialForm
    list_display = ["name", "kind", "username", "secret_set", "used_by"]
    list_filter = ["kind"]
    search_fields = ["name", "username"]  # never the secret or its ciphertext
    readonly_fields = ["secret_set", "used_by", "created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Credential]:
        # One count per kind of user (fabrics, cluster connections), in the same query: a
        # subquery each (an index probe per shown row), which the list's row count leaves out.
        counts = {f"uses_{rel.name}": uses(rel) for rel in Credential._meta.related_objects}
        return super().get_queryset(request).annotate(**counts)

    def get_fieldsets(self, request: HttpRequest, obj: Credential | None = None) -> Any:
        may_write = self.has_change_permission(request, obj) if obj else self.has_add_permission(request)
        secret = ["secret"] if may_write else []
        return [
            (None, {"fields": ["name", "kind", "username", *secret, "secret_set", "description"]}),
            ("Use", {"fields": ["used_by", "created_at", "updated_at"]}),
        ]

    @admin.display(description="secret")
    def secret_set(self, credential: Credential) -> str:
        if not credential.pk or not credential.encrypted_secret:
            return "not set"
        return f"set on {stamp(credential.rotated_at)}"

    @admin.display(description="used by")
    def used_by(self, credential: Credential) -> str:
        if not credential.pk:
            return "nothing yet"
        uses = []
        for rel in Credential._meta.related_objects:
            count = getattr(credential, f"uses_{rel.name}", None)
            if count is None:
                count = getattr(credential, rel.get_accessor_name() or rel.name).count()
            related = rel.related_model
            if count and not isinstance(related, str):
                opts = related._meta
                uses.append(f"{count} {opts.verbose_name if count == 1 else opts.verbose_name_plural}")
        return ", ".join(uses) or "nothing"
