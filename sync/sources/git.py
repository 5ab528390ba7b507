"""Read a fabric's manifests from Git without ever checking files out.

The repository is fetched shallowly into a bare per-fabric cache that is reused
between syncs. Files are listed with ``git ls-tree`` and read with
``git cat-file --batch``: nothing is written to a work tree, so a symlink in the
repository cannot point a read outside it, and git itself refuses tree entries
that would leave the repository. Symlinked manifests are refused outright.

Every git error is redacted (git echoes the remote URL, credentials included) and
classified: missing branch, rejected credentials and unknown repositories are
permanent; network trouble and timeouts are transient. No error raised here chains
another: ``subprocess.TimeoutExpired`` carries git's whole command line, and a chained
exception ends up in Celery's logged and stored tracebacks.

The calls that reach the remote (``ls-remote``, ``fetch``) pass the shared circuit
breaker of the remote's host (``core.guards.git_remote``), after the URL has passed
``sync.validators`` again: the admin form checked it when it was saved, but the
allowed local roots (or the rules) may have changed since. Reads of the local cache
(``ls-tree``, ``cat-file``) need no breaker.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.crypto import salted_hmac

from core import guards
from core.breaker import CircuitBreaker, CircuitBreakerOpenError, Permit, default_config
from core.breaker_core import BreakerConfig
from core.process_limits import is_resource_exhaustion
from core.redaction import redact
from sync.errors import PermanentSyncError, SyncError, TransientSyncError, WorkerResourcesExhausted
from sync.manifests import decode_path
from sync.validators import validate_git_url

MANIFEST_SUFFIXES = (".yaml", ".yml")
SYMLINK_MODE = "120000"

# Substrings of git/ssh stderr that mean "retrying will not help".
_PERMANENT_PATTERNS = re.compile(
    r"couldn't find remote ref|remote branch .* not found|authentication failed|"
    r"could not read username|could not read password|terminal prompts disabled|"
    r"permission denied|repository not found|does not appear to be a git repository|"
    r"host key verification failed|not a git repository|unsupported protocol|"
    r"transport '.*' not allowed|invalid|returned error: 40[134]|does not exist in",
    re.IGNORECASE,
)
# What git says when the host answered 401 and there is nothing (left) to authenticate
# with: it would prompt for a user name, which a sync never allows.
_REJECTED_CREDENTIALS = re.compile(
    r"authentication failed|could not read username|could not read password|terminal prompts disabled|"
    r"returned error: 401",
    re.IGNORECASE,
)
# "[user@]host:path", git's scp-like form
_SCP_HOST = re.compile(r"^(?:[^@/]*@)?(?P<host>[^@/:]+):")


class RemoteUnavailable(SyncError):
    """The remote host's breaker rejected the call: git did not run, nothing was sent.

    Neither transient nor permanent: the sync is skipped (no failure counted, no
    retry) and comes back when the breaker admits calls again (``retry_at``).
    """

    def __init__(self, message: str, retry_at: datetime | None = None, forced: bool = False) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.forced = forced  # an operator opened the breaker: it says nothing about the remote

    @classmethod
    def from_rejection(cls, rejection: CircuitBreakerOpenError) -> RemoteUnavailable:
        return cls(f"remote unavailable ({rejection.reason()})", rejection.retry_at, forced=rejection.forced)


@dataclass(frozen=True)
class TreeFile:
    path: str
    oid: str
    size: int


def transport_url(url: str) -> str:
    """Local paths go through file:// so that shallow fetches work for them too."""
    return f"file://{url}" if url.startswith("/") else url


def source_fingerprint(url: str, branch: str, path: str) -> str:
    return hashlib.sha256(f"{url}\n{branch}\n{path}".encode()).hexdigest()


def remote_host(url: str) -> str:
    """The host whose breaker guards ``url``: "local" for local paths and file://."""
    if url.startswith("/") or url.lower().startswith("file:"):
        return "local"
    host: str | None = None
    if "://" in url:
        try:
            host = urlsplit(url).hostname
        except ValueError:  # a malformed URL: sync.validators refuses it before any call
            host = None
    elif match := _SCP_HOST.match(url):
        host = match.group("host")
    return (host or "unknown").lower()


def _breaker_config() -> BreakerConfig:
    """Only the remote's own failures count: ``TransientSyncError`` (no connection, a
    timeout, a 5xx). A half-open trial's lease outlives the git call it admits, so a
    hung remote gets no more trials than ``half_open_calls``."""
    return default_config(
        failure_exceptions=(TransientSyncError,),
        trial_timeout=max(BreakerConfig.trial_timeout, float(settings.SYNC_GIT_TIMEOUT) + 5),
    )


def git_breaker(host: str) -> CircuitBreaker:
    """The shared breaker of a Git remote host (see ``remote_host``)."""
    return guards.git_remote(host, _breaker_config)


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a terminal
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=15",
            # Defence in depth beside sync.validators: no ext::, no git://.
            "GIT_ALLOW_PROTOCOL": "https:ssh:file",
            "GIT_CONFIG_NOSYSTEM": "1",
            "LC_ALL": "C",
        }
    )
    return env


class GitSource:
    def __init__(
        self, url: str, branch: str, cache_dir: Path, timeout: int, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.url = url
        self.branch = branch
        self.cache_dir = cache_dir
        self.timeout = timeout
        # e.g. core.credentials.git_credential_env: credentials reach git through its
        # environment, never its argument list (visible in ps) or the URL (echoed in errors).
        self._extra_env = dict(extra_env or {})
        self.host = remote_host(url)

    def __repr__(self) -> str:
        return f"<GitSource {redact(self.url)} {self.branch}>"

    # -- running git ------------------------------------------------------------------
    def _git(self, *args: str, input_bytes: bytes | None = None, in_cache: bool = False) -> bytes:
        command = ["git", "-c", "protocol.file.allow=always", "-c", "core.symlinks=false"]
        if in_cache:
            command += ["--git-dir", str(self.cache_dir)]
        command += args
        completed = self._run(command, args[0], input_bytes)
        if isinstance(completed, SyncError):
            raise completed  # raised here, outside any handler: it has no __context__
        if completed.returncode != 0:
            stderr = redact(completed.stderr.decode("utf-8", "replace").strip())
            message = f"git {args[0]} failed: {stderr or 'exit code ' + str(completed.returncode)}"
            if _REJECTED_CREDENTIALS.search(stderr):
                # git's own words ("unable to read askpass response from '/bin/false'")
                # would send an operator looking at the wrong thing.
                raise PermanentSyncError(
                    f"Authentication failed: {self.host or 'the Git host'} rejected "
                    + ("the fabric's Git credential" if self._extra_env else "the request (no Git credential is set)")
                    + f" (HTTP 401); set a valid token on the credential. git {args[0]}: {stderr.splitlines()[-1]}"
                )
            if _PERMANENT_PATTERNS.search(stderr):
                raise PermanentSyncError(message)
            raise TransientSyncError(message)
        return completed.stdout

    def _run(
        self, command: list[str], name: str, input_bytes: bytes | None
    ) -> subprocess.CompletedProcess[bytes] | SyncError:
        """Run git; its timeout or a failure to start it comes back as an error to raise.

        Returned, not raised: ``subprocess.TimeoutExpired`` carries the whole command
        line (the URL, and any credentials in it), so it must never become the
        ``__context__`` of the error the caller raises.
        """
        try:
            return subprocess.run(
                command,
                input=input_bytes,
                capture_output=True,
                timeout=self.timeout,
                env={**self._extra_env, **_git_env()},  # the hardening wins over any extra
                check=False,
            )
        except subprocess.TimeoutExpired:
            return TransientSyncError(f"git {name} timed out after {self.timeout} s")
        except OSError as exc:
            if is_resource_exhaustion(exc):
                raise WorkerResourcesExhausted(f"could not run git: {exc.strerror}") from None
            return TransientSyncError(f"could not run git: {exc.strerror or type(exc).__name__}")

    def _remote(self, *args: str, in_cache: bool = False) -> bytes:
        """Run a git command that reaches the remote, through the host's shared breaker.

        1. Ask the breaker of the remote host. A rejection raises ``RemoteUnavailable``
           at once: git does not run and nothing is sent.
        2. Run git. A transient failure (no connection, a timeout, a 5xx) counts
           against the breaker. A permanent one (rejected credentials, a missing
           repository) means the remote answered: it counts as a success. Anything
           else (our own soft time limit) counts neither way.
        """
        permit = _admit(git_breaker(self.host))
        if isinstance(permit, RemoteUnavailable):
            raise permit
        try:
            out = self._git(*args, in_cache=in_cache)
        except PermanentSyncError:
            permit.finish()
            raise
        except BaseException as exc:
            permit.finish(exc)
            raise
        permit.finish()
        return out

    def check_source(self) -> None:
        """The rules of ``sync.validators`` again, right before git uses the URL.

        The admin checked the URL when it was saved; the allowed local roots (or the
        rules) may have changed since, or the row was written another way.
        """
        try:
            validate_git_url(self.url)
            refused = ""
        except ValidationError as exc:
            refused = "; ".join(exc.messages)  # the validator redacts the URL it echoes
        if refused:
            raise PermanentSyncError(f"Git source refused: {refused}")

    def _ensure_cache(self) -> Path:
        if not (self.cache_dir / "HEAD").exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet", "--bare", str(self.cache_dir))
        return self.cache_dir

    def _remove_stale_locks(self) -> None:
        """Delete lock files a killed git left in the cache (``shallow.lock`` after a
        fetch hit its timeout), or every later fetch fails on them. Only the holder of
        the fabric's lease uses its cache, so no live git holds them."""
        for lock in [*self.cache_dir.glob("*.lock"), *(self.cache_dir / "refs").rglob("*.lock")]:
            lock.unlink(missing_ok=True)

    # -- commits ----------------------------------------------------------------------
    def check_reachable(self) -> None:
        """Raise a ``SyncError`` (redacted, classified) unless the remote answers."""
        self.check_source()
        self._remote("ls-remote", "--heads", "--", transport_url(self.url))

    def remote_identity(self) -> str:
        """What decides the remote's answer about the branch: URL, branch and the credential
        git sends, as one keyed digest (``salted_hmac`` with the secret key), so the
        credential never appears in it and cannot be guessed back from it."""
        parts = [self.url, self.branch, *(f"{k}={v}" for k, v in sorted(self._extra_env.items()))]
        return salted_hmac("sync.sources.git.remote_identity", "\0".join(parts), algorithm="sha256").hexdigest()

    def remote_commit(self) -> str:
        """The branch's commit on the remote, without downloading objects."""
        self.check_source()
        out = self._remote("ls-remote", "--heads", "--", transport_url(self.url), f"refs/heads/{self.branch}")
        for line in out.decode().splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{self.branch}":
                return sha
        raise PermanentSyncError(f"branch '{self.branch}' not found in {redact(self.url)}")

    def fetch(self) -> str:
        """Fetch the branch tip (depth 1) into the cache; return its commit."""
        self.check_source()
        self._ensure_cache()
        self._remove_stale_locks()
        ref = f"refs/fabric/{self.branch}"
        self._remote(
            "fetch", "--quiet", "--depth", "1", "--no-tags", "--force",
            "--", transport_url(self.url), f"+refs/heads/{self.branch}:{ref}",
            in_cache=True,
        )  # fmt: skip
        return self._git("rev-parse", "--verify", f"{ref}^{{commit}}", in_cache=True).decode().strip()

    # -- files ------------------------------------------------------------------------
    def manifest_files(self, commit: str, folder: str, max_bytes: int, max_files: int) -> list[TreeFile]:
        """Every ``*.yaml``/``*.yml`` under ``folder`` at ``commit``, sizes checked."""
        folder = str(PurePosixPath(folder)) if folder else ""
        if folder and folder != ".":
            try:
                kind = self._git("cat-file", "-t", f"{commit}:{folder}", in_cache=True).decode().strip()
            except PermanentSyncError:
                kind = ""  # raised below, unchained
            if not kind:
                raise PermanentSyncError(f"folder '{folder}' not found at commit {commit[:10]}")
            if kind != "tree":
                raise PermanentSyncError(f"'{folder}' is not a folder at commit {commit[:10]} (it is a {kind})")
        listing = self._git("ls-tree", "-r", "-l", "-z", commit, "--", folder or ".", in_cache=True)
        files: list[TreeFile] = []
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, _, raw_path = entry.partition(b"\t")
            mode, obj_type, oid, size = meta.decode().split()
            if not raw_path.decode("utf-8", "surrogateescape").lower().endswith(MANIFEST_SUFFIXES):
                continue
            path = decode_path(raw_path)  # refuses a name that is not UTF-8, naming it
            if mode == SYMLINK_MODE:
                raise PermanentSyncError(f"{path}: symbolic links are refused; commit the manifest itself")
            if obj_type != "blob":
                continue
            if int(size) > max_bytes:
                raise PermanentSyncError(
                    f"{path}: {int(size):,} bytes is over the manifest size limit of {max_bytes:,} bytes"
                )
            files.append(TreeFile(path=path, oid=oid, size=int(size)))
        if len(files) > max_files:
            raise PermanentSyncError(f"{len(files):,} manifest files is over the limit of {max_files:,}")
        return sorted(files, key=lambda f: f.path)

    def read_blobs(self, files: list[TreeFile]) -> dict[str, bytes]:
        """Contents by path, read in one ``git cat-file --batch`` call."""
        if not files:
            return {}
        request = "".join(f"{f.oid}\n" for f in files).encode()
        out = self._git("cat-file", "--batch", input_bytes=request, in_cache=True)
        contents: dict[str, bytes] = {}
        position = 0
        for file in files:
            header_end = out.index(b"\n", position)
            _oid, _type, size = out[position:header_end].decode().split()
            body_start = header_end + 1
            contents[file.path] = out[body_start : body_start + int(size)]
            position = body_start + int(size) + 1
        return contents


def _admit(breaker: CircuitBreaker) -> Permit | RemoteUnavailable:
    try:
        return breaker.admit()
    except CircuitBreakerOpenError as exc:
        return RemoteUnavailable.from_rejection(exc)


def cache_dir_for(root: Path, fabric_id: int, url: str) -> Path:
    """One cache per fabric and URL: a changed URL starts a fresh cache."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    host = urlsplit(transport_url(url)).hostname or "local"
    return root / f"{fabric_id}-{re.sub(r'[^A-Za-z0-9.-]', '_', host)}-{digest}"
