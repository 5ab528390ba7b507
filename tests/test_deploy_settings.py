"""Production settings: `check --deploy` is clean with the documented variables; data files are private."""

from __future__ import annotations

import importlib.util
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def check_deploy(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    base.update(
        {
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(60),
            "DJANGO_ALLOWED_HOSTS": "fabric.example.com",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
            "CREDENTIALS_KEYS": "YlNrX2xQV0FwM2xSeXJ6Ylc5T0ZtNmd2UG1aSGVxX0E=",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_variables():
    result = check_deploy(DJANGO_HTTPS="true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_complains_without_https_settings():
    result = check_deploy()
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


def test_make_run_creates_var_and_the_secret_key_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("run_script", ROOT / "scripts" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    run_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_script)
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    old_umask = os.umask(0o022)
    try:
        run_script.prepare_var_dir(tmp_path / "var")
        database = tmp_path / "var" / "db.sqlite3"
        database.write_text("")  # as SQLite would create it, under the umask make run set
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var" / "secret_key").stat().st_mode) == 0o600
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
