"""Credentials: encrypted at rest, rotatable keys, write-only in the admin, never shown to anyone."""

from __future__ import annotations

import io
import re

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from core.checks import check_credentials_keys, check_credentials_keys_deploy
from core.credentials import CredentialError, Secret, decrypt, encrypt, git_credential_env
from core.models import Credential
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db

SECRET = "glpat-Sup3r/S3cr@t value"
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def make_credential(name: str = "gitlab-deploy", secret: str = SECRET, **fields) -> Credential:
    credential = Credential(name=name, username=fields.pop("username", "oauth2"), **fields)
    credential.set_secret(secret)
    credential.save()
    return credential


def staff_client(*codenames: str) -> Client:
    user = get_user_model().objects.create_user(f"op-{'-'.join(codenames) or 'none'}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def superuser_client() -> Client:
    user = get_user_model().objects.create_superuser("root", password="x")
    client = Client()
    client.force_login(user)
    return client


def raw_secret_column(credential: Credential) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT encrypted_secret FROM core_credential WHERE id = %s", [credential.pk])
        return str(cursor.fetchone()[0])


# --- At rest ---------------------------------------------------------------------------


def test_the_secret_is_stored_as_ciphertext_and_only_reveal_gives_it_back():
    credential = make_credential()
    stored = raw_secret_column(credential)
    assert SECRET not in stored
    assert "Sup3r" not in stored
    assert Credential.objects.get(pk=credential.pk).secret().reveal() == SECRET


def test_the_same_secret_encrypts_differently_each_time():
    assert encrypt(SECRET) != encrypt(SECRET)


def test_a_revealed_secret_stays_masked_in_str_repr_and_formatting():
    secret = make_credential().secret()
    for shown in (str(secret), repr(secret), f"{secret!r}", f"{secret}", str([secret])):
        assert "Sup3r" not in shown
    assert secret == Secret(SECRET)


def test_str_and_repr_of_a_credential_show_neither_secret_nor_ciphertext():
    credential = make_credential()
    for shown in (str(credential), repr(credential)):
        assert "Sup3r" not in shown
        assert credential.encrypted_secret not in shown
        assert "gitlab-deploy" in shown


# --- Keys and rotation -------------------------------------------------------------------


def test_a_new_first_key_encrypts_while_the_old_key_still_decrypts(settings):
    settings.CREDENTIALS_KEYS = [KEY_A]
    credential = make_credential()
    settings.CREDENTIALS_KEYS = [KEY_B, KEY_A]
    assert credential.secret().reveal() == SECRET
    fresh = encrypt("new")
    settings.CREDENTIALS_KEYS = [KEY_B]
    assert decrypt(fresh).reveal() == "new"


def test_reencrypting_moves_every_secret_to_the_first_key_so_the_old_key_can_go(settings):
    settings.CREDENTIALS_KEYS = [KEY_A]
    credential = make_credential()
    settings.CREDENTIALS_KEYS = [KEY_B, KEY_A]
    call_command("reencrypt_credentials", stdout=io.StringIO())
    settings.CREDENTIALS_KEYS = [KEY_B]
    assert Credential.objects.get(pk=credential.pk).secret().reveal() == SECRET


def test_a_secret_no_key_opens_fails_with_a_message_naming_the_credential_only(settings):
    settings.CREDENTIALS_KEYS = [KEY_A]
    credential = make_credential()
    settings.CREDENTIALS_KEYS = [KEY_B]
    with pytest.raises(CredentialError) as caught:
        credential.secret()
    message = str(caught.value)
    assert "gitlab-deploy" in message
    assert "CREDENTIALS_KEYS" in message
    assert "Sup3r" not in message
    assert KEY_A not in message
    assert KEY_B not in message


def test_without_credentials_keys_the_key_derives_from_secret_key(settings):
    settings.CREDENTIALS_KEYS = []
    settings.SECRET_KEY = "one-secret-key"
    credential = make_credential()
    settings.SECRET_KEY = "another-secret-key"
    with pytest.raises(CredentialError):
        credential.secret()


def test_setting_credentials_keys_later_keeps_secrets_from_the_derived_key_readable(settings):
    settings.CREDENTIALS_KEYS = []
    credential = make_credential()
    settings.CREDENTIALS_KEYS = [KEY_A]
    assert credential.secret().reveal() == SECRET
    call_command("reencrypt_credentials", stdout=io.StringIO())
    settings.SECRET_KEY = "rotated-secret-key"
    assert Credential.objects.get(pk=credential.pk).secret().reveal() == SECRET


def test_check_deploy_warns_when_the_key_derives_from_secret_key(settings):
    settings.CREDENTIALS_KEYS = []
    assert [m.id for m in check_credentials_keys_deploy()] == ["core.W001"]
    settings.CREDENTIALS_KEYS = [KEY_A]
    assert check_credentials_keys_deploy() == []


def test_a_malformed_key_is_a_start_up_error_that_does_not_echo_it(settings):
    settings.CREDENTIALS_KEYS = [KEY_A, "not-a-fernet-key-hunter2"]
    errors = check_credentials_keys()
    assert [e.id for e in errors] == ["core.E001"]
    assert "entry 2" in errors[0].msg
    assert "hunter2" not in errors[0].msg


# --- Using it ------------------------------------------------------------------------------


def test_git_gets_a_basic_authorization_header_for_the_credentials_host_only():
    env = git_credential_env(make_credential(), "https://git.example.com:8443/acme/fabric.git")
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example.com:8443/.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")


def test_a_bearer_token_is_sent_as_a_bearer_header():
    credential = make_credential(kind=Credential.Kind.BEARER_TOKEN, username="")
    assert git_credential_env(credential, "https://h/r.git")["GIT_CONFIG_VALUE_0"] == f"Authorization: Bearer {SECRET}"


def test_no_credential_means_no_environment_and_a_credential_never_goes_over_plain_transport():
    assert git_credential_env(None, "ssh://git@h/r.git") == {}
    with pytest.raises(CredentialError, match="https:// only"):
        git_credential_env(make_credential(), "ssh://git@h/r.git")


# --- The admin: write-only -------------------------------------------------------------------


def assert_no_secret_in(html: str, credential: Credential) -> None:
    assert "Sup3r" not in html
    assert SECRET not in html
    assert credential.encrypted_secret not in html
    assert raw_secret_column(credential)[:40] not in html


def test_the_change_page_never_renders_the_secret_or_its_ciphertext():
    credential = make_credential()
    client = superuser_client()
    html = client.get(reverse("admin:core_credential_change", args=[credential.pk])).content.decode()
    assert_no_secret_in(html, credential)
    secret_box = re.search(r'<input type="password" name="secret"[^>]*>', html)
    assert secret_box is not None
    assert 'value="' not in secret_box.group(0)
    assert "set on" in html
    changelist = client.get(reverse("admin:core_credential_changelist")).content.decode()
    assert_no_secret_in(changelist, credential)


def test_view_only_staff_see_name_kind_user_and_date_but_no_secret_box():
    credential = make_credential()
    client = staff_client("view_credential")
    html = client.get(reverse("admin:core_credential_change", args=[credential.pk])).content.decode()
    assert_no_secret_in(html, credential)
    assert 'name="secret"' not in html
    assert "gitlab-deploy" in html
    assert "oauth2" in html
    assert "set on" in html


def test_view_only_staff_cannot_change_a_credential():
    credential = make_credential()
    client = staff_client("view_credential")
    response = client.post(
        reverse("admin:core_credential_change", args=[credential.pk]),
        {"name": "gitlab-deploy", "kind": "https_token", "username": "oauth2", "secret": "stolen"},
    )
    assert response.status_code == 403
    assert Credential.objects.get(pk=credential.pk).secret().reveal() == SECRET


def change_form(credential: Credential, **overrides: str) -> dict[str, str]:
    return {
        "name": credential.name,
        "kind": credential.kind,
        "username": credential.username,
        "description": "",
        "secret": "",
        **overrides,
    }


def test_saving_with_a_blank_secret_keeps_the_stored_one():
    credential = make_credential()
    before = (credential.encrypted_secret, credential.rotated_at)
    client = staff_client("view_credential", "change_credential")
    response = client.post(
        reverse("admin:core_credential_change", args=[credential.pk]), change_form(credential, username="deploy")
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.username == "deploy"
    assert (credential.encrypted_secret, credential.rotated_at) == before


def test_typing_a_new_secret_replaces_it_and_records_when():
    credential = make_credential()
    rotated_before = credential.rotated_at
    client = staff_client("view_credential", "change_credential")
    client.post(reverse("admin:core_credential_change", args=[credential.pk]), change_form(credential, secret="tok2"))
    credential.refresh_from_db()
    assert credential.secret().reveal() == "tok2"
    assert credential.rotated_at > rotated_before


def test_a_new_credential_needs_a_secret_and_a_failed_form_does_not_echo_it():
    client = staff_client("view_credential", "add_credential")
    url = reverse("admin:core_credential_add")
    missing = client.post(url, {"name": "n", "kind": "https_token", "username": "u", "secret": ""})
    assert "needs its secret" in missing.content.decode()
    bad = client.post(url, {"name": "n", "kind": "https_token", "username": "a:b", "secret": SECRET})
    assert "cannot contain" in bad.content.decode()
    assert "Sup3r" not in bad.content.decode()
    assert not Credential.objects.exists()


def test_searching_credentials_never_matches_the_secret():
    make_credential()
    client = staff_client("view_credential")
    html = client.get(reverse("admin:core_credential_changelist"), {"q": "Sup3r"}).content.decode()
    assert "0 results" in html


# --- The fabric admin ------------------------------------------------------------------------


def test_the_fabric_changelist_does_not_search_git_urls():
    make_fabric("https://git.example.com/acme/needle.git", name="east")
    client = staff_client("view_fabric")
    html = client.get(reverse("admin:sync_fabric_changelist"), {"q": "needle"}).content.decode()
    assert "0 results" in html


def test_view_only_staff_see_a_fabrics_url_redacted_and_its_credential_by_name():
    credential = make_credential()
    # A row stored before the validator refused credentials (the ORM does not validate).
    fabric = make_fabric("https://old:leaked-pw@git.example.com/r.git", name="east", git_credential=credential)
    client = staff_client("view_fabric", "view_credential")
    html = client.get(reverse("admin:sync_fabric_change", args=[fabric.pk])).content.decode()
    assert "leaked-pw" not in html
    assert "https://old:***@git.example.com/r.git" in html
    assert "gitlab-deploy" in html
    assert_no_secret_in(html, credential)


def test_a_change_user_attaches_a_credential_to_an_https_fabric_but_not_to_an_ssh_one():
    credential = make_credential()
    fabric = make_fabric("https://git.example.com/acme/fabric.git", name="east")
    client = staff_client("view_fabric", "change_fabric")
    url = reverse("admin:sync_fabric_change", args=[fabric.pk])
    form = {
        "name": "east",
        "description": "",
        "git_url": fabric.git_url,
        "git_credential": credential.pk,
        "git_branch": "main",
        "git_path": "manifests",
        "sync_interval": 300,
        "sync_enabled": "on",
        "runs-TOTAL_FORMS": 0,
        "runs-INITIAL_FORMS": 0,
    }
    assert client.post(url, form).status_code == 302
    fabric.refresh_from_db()
    assert fabric.git_credential == credential

    refused = client.post(url, {**form, "git_url": "ssh://git@git.example.com/acme/fabric.git"})
    assert "HTTPS only" in refused.content.decode()
    refused = client.post(url, {**form, "git_url": "https://oauth2:tok3n@git.example.com/acme/fabric.git"})
    assert "Git URL contains credentials" in refused.content.decode()
    assert "tok3n" not in refused.content.decode()
