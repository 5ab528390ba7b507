"""Bad Git sources are rejected at validation, with credentials masked."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from core.redaction import RedactingFilter, redact
from sync.models import Fabric
from sync.validators import validate_git_branch, validate_git_path, validate_git_url


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/fabric.git",
        "https://git.example.com:8443/acme/fabric.git",
        "https://[::1]:8443/acme/fabric.git",
        "https://git.example.com/acme/%40scope/fabric.git",
        "ssh://git@github.com/acme/fabric.git",
        "ssh://git@github.com:2222/acme/fabric.git",
        "git@github.com:acme/fabric.git",
    ],
)
def test_remote_urls_are_accepted(url):
    validate_git_url(url)


def test_a_local_path_below_an_allowed_root_is_accepted(repos_root):
    validate_git_url(str(repos_root / "demo"))
    validate_git_url(f"file://{repos_root}/demo")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transport helpers"),
        ("fd::17", "transport helpers"),
        ("http://example.com/repo.git", "Unsupported Git URL scheme 'http'"),
        ("git://example.com/repo.git", "Unsupported Git URL scheme 'git'"),
        ("ftp://example.com/repo.git", "Unsupported"),
        ("file:///etc", "outside the allowed roots"),
        ("/etc/passwd", "outside the allowed roots"),
        ("relative/path", "Not a Git URL"),
        ("--upload-pack=touch /tmp/x", "may not start with '-'"),
        ("https://example.com/a\nb", "single line"),
        ("https:///nohost", "no host"),
        ("https://[::1/repo.git", "Not a valid URL"),
        ("https://host:port/repo.git", "Not a valid URL"),
        ("https://h/r\x00.git", "control characters"),
    ],
)
def test_dangerous_or_unknown_sources_are_rejected(url, reason):
    with pytest.raises(ValidationError, match=reason):
        validate_git_url(url)


def test_a_local_path_escaping_an_allowed_root_with_dotdot_is_rejected(repos_root):
    with pytest.raises(ValidationError, match="outside the allowed roots"):
        validate_git_url(f"{repos_root}/../../etc")


def test_a_symlink_out_of_an_allowed_root_is_rejected(repos_root, tmp_path):
    link = repos_root / "sneaky"
    link.symlink_to(tmp_path)
    with pytest.raises(ValidationError, match="outside the allowed roots"):
        validate_git_url(str(link))


def test_a_rejected_url_never_echoes_its_credentials():
    with pytest.raises(ValidationError) as caught:
        validate_git_url("http://user:s3cret@example.com/repo.git")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://oauth2:tok3n@gitlab.example.com/acme/fabric.git", "tok3n"),
        ("https://ghp_T0KEN@github.com/acme/fabric.git", "ghp_T0KEN"),
        ("https://bob:s3cr%2Ft@git.example.com/r.git", "s3cr"),
        ("https://bob:s3/cr3t@git.example.com/r.git", "cr3t"),
        ("https://bob:p@ss@git.example.com/r.git", "p@ss"),
        ("https://bob:two words@git.example.com/r.git", "two words"),
        ("https://git.example.com/r.git?private_token=s3cr3t", "s3cr3t"),
        ("http://user:s3cret@example.com/repo.git", "s3cret"),
        ("ssh://git:sshpw@git.example.com/r.git", "sshpw"),
        ("ssh://git:ssh/pw@git.example.com/r.git", "ssh/pw"),
        ("ssh://git:ssh pw@git.example.com/r.git", "ssh pw"),
        ("git:scppw@git.example.com:acme/r.git", "scppw"),
    ],
)
def test_a_url_with_a_password_or_token_is_refused_pointing_to_the_credential_field(url, secret):
    with pytest.raises(ValidationError) as caught:
        validate_git_url(url)
    message = " ".join(caught.value.messages)
    assert "contains credentials" in message
    assert "Git credential" in message
    assert secret not in message


@pytest.mark.parametrize("path", ["../outside", "/abs/path", "a/../../b", "-rf", "manifests\x00", "a\nb"])
def test_manifest_paths_must_stay_inside_the_repository(path):
    with pytest.raises(ValidationError):
        validate_git_path(path)


@pytest.mark.parametrize(
    "branch",
    ["-x", "a..b", "a b", "x.lock", "a//b", "end/", "main\n", "ma\x00in", "a\tb", ".hidden", "a/.b", "a.lock/b"],
)
def test_bad_branch_names_are_rejected(branch):
    with pytest.raises(ValidationError):
        validate_git_branch(branch)


@pytest.mark.django_db
def test_model_validation_rejects_an_interval_under_a_minute(repos_root):
    fabric = Fabric(name="f", git_url=str(repos_root / "x"), sync_interval=59)
    with pytest.raises(ValidationError, match="sync_interval"):
        fabric.full_clean()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pass@h/r.git", "https://user:***@h/r.git"),
        ("https://ghp_TOKEN@github.com/r", "https://***@github.com/r"),
        ("fatal: unable to access 'https://a:b@h/r/': 403", "fatal: unable to access 'https://a:***@h/r/': 403"),
        ("https://h/r?private_token=abc&x=1", "https://h/r?private_token=***&x=1"),
        ("/srv/repos/plain", "/srv/repos/plain"),
        ("https://bob:s3/cr3t@h/r.git", "https://bob:***@h/r.git"),
        ("https://bob:p@ss@h/r.git", "https://bob:***@h/r.git"),
        ("fatal: 'https://bob:two words@h/r/': 401", "fatal: 'https://bob:***@h/r/': 401"),
        ("https://ann:p/w@rd x@h.example/r.git failed", "https://ann:***@h.example/r.git failed"),
        ("https://h:8443/r.git failed, ask admin@example.com", "https://h:8443/r.git failed, ask admin@example.com"),
        ("https://u:p@h1/x and https://u2:p2@h2/y", "https://u:***@h1/x and https://u2:***@h2/y"),
    ],
)
def test_redaction_masks_credentials(text, expected):
    assert redact(text) == expected


def test_the_logging_filter_masks_credentials_in_formatted_messages(caplog):
    import logging

    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redaction"):
        logger.info("fetching %s", "https://bob:hunter2@git.example.com/r.git")
    assert "hunter2" not in caplog.text
    assert "bob:***@" in caplog.text


def test_a_valid_branch_with_slashes_and_dots_is_accepted():
    validate_git_branch("release/v1.2")


@pytest.mark.django_db
def test_model_validation_refuses_a_nul_in_the_manifest_path_before_the_database_sees_it(repos_root):
    fabric = Fabric(name="f", git_url=str(repos_root / "x"), git_path="manifests\x00")
    with pytest.raises(ValidationError, match="git_path"):
        fabric.full_clean()
