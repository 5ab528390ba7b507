"""Move credentials embedded in Git URLs into encrypted ``core.Credential`` rows.

For each fabric whose ``git_url`` carries user info with a secret:

1. https (and any other non-ssh scheme): ``https://user:secret@host/r.git`` becomes
   ``https://host/r.git`` plus a Credential named ``<host>-<user>`` (user name kept,
   secret encrypted) linked as the fabric's ``git_credential``. A lone token
   (``https://TOKEN@host``) becomes a credential with an empty user name and the token
   as its secret. Fabrics that carried the same host, user and secret share one
   credential.
2. ssh: ``ssh://git:secret@host/r`` becomes ``ssh://git@host/r``. ssh never used the
   password (keys only, BatchMode), so the credential is kept for the record but not
   linked; its description says so.

The user info is read the way ``core.redaction`` reads it, so passwords with
unencoded ``/``, ``@`` or spaces move out whole. Reversing puts the credentials back
into the URLs (percent-encoded) so that the previous code keeps working.
"""

from urllib.parse import quote, urlsplit

from django.db import migrations
from django.utils import timezone

from core.credentials import decrypt, encrypt
from core.redaction import url_userinfo


def _host(url):
    try:
        return urlsplit(url).hostname or "git"
    except ValueError:
        return "git"


def _unique_name(Credential, base, taken):
    name, n = base[:100], 1
    while name in taken or Credential.objects.filter(name=name).exists():
        n += 1
        name = f"{base[: 100 - len(str(n)) - 1]}-{n}"
    taken.add(name)
    return name


def move_credentials_out_of_urls(apps, schema_editor):
    Fabric = apps.get_model("sync", "Fabric")
    Credential = apps.get_model("core", "Credential")
    now = timezone.now()
    shared = {}  # (host, user, secret, linked) -> Credential created by this migration
    taken = set()
    for fabric in Fabric.objects.filter(git_url__contains="@").order_by("id"):
        parts = url_userinfo(fabric.git_url)
        if parts is None:
            continue
        bare_url, user, password = parts
        scheme = fabric.git_url.split("://", 1)[0].lower()
        host = _host(bare_url)
        if scheme == "ssh":
            if password is None:
                continue  # ssh://git@host: a login name, not a secret
            new_url = f"{scheme}://{quote(user, safe='')}@{bare_url.split('://', 1)[1]}"
            key = (host, user, password, False)
            description = (
                f"Moved out of the ssh URL of fabric {fabric.name!r} by a migration. ssh never uses a "
                "password (keys only), so no fabric uses it; delete it when you no longer need it."
            )
        else:
            new_url = bare_url
            if password is None:  # a lone token in the user name's place
                user, password = "", user
                description = (
                    "Moved out of a Git URL that carried a lone token. Set the user name your Git host "
                    "expects with a token (e.g. x-access-token for GitHub, oauth2 for GitLab)."
                )
            else:
                description = "Moved out of a Git URL by a migration."
            key = (host, user, password, True)
        credential = shared.get(key)
        if credential is None:
            base = f"{host}-{user or 'token'}" + ("" if key[3] else "-ssh-password")
            credential = Credential.objects.create(
                name=_unique_name(Credential, base, taken),
                kind="https_token",
                username=user,
                description=description,
                encrypted_secret=encrypt(password),
                rotated_at=now,
            )
            shared[key] = credential
        fabric.git_url = new_url
        fabric.git_credential = credential if key[3] else None
        fabric.save(update_fields=["git_url", "git_credential"])


def put_credentials_back_into_urls(apps, schema_editor):
    Fabric = apps.get_model("sync", "Fabric")
    for fabric in Fabric.objects.filter(git_credential__isnull=False).select_related("git_credential"):
        credential = fabric.git_credential
        secret = decrypt(credential.encrypted_secret, name=credential.name).reveal()
        scheme, sep, rest = fabric.git_url.partition("://")
        if not sep or credential.kind != "https_token":
            continue
        userinfo = f"{quote(credential.username, safe='')}:{quote(secret, safe='')}" if credential.username else quote(
            secret, safe=""
        )
        fabric.git_url = f"{scheme}://{userinfo}@{rest}"
        fabric.git_credential = None
        fabric.save(update_fields=["git_url", "git_credential"])


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
        ("sync", "0002_fabric_git_credential"),
    ]

    operations = [
        migrations.RunPython(move_credentials_out_of_urls, put_credentials_back_into_urls),
    ]
