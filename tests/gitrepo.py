"""A real Git repository on disk for tests: write manifests, commit, branch."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_IDENTITY = ["-c", "user.name=Fabric Tests", "-c", "user.email=tests@example.invalid", "-c", "commit.gpgsign=false"]


def manifest(kind: str, name: str, namespace: str = "", **spec: object) -> str:
    lines = ["apiVersion: fabric.example/v1", f"kind: {kind}", "metadata:", f"  name: {name}"]
    if namespace:
        lines.append(f"  namespace: {namespace}")
    if spec:
        lines.append("spec:")
        lines.extend(f"  {key}: {value}" for key, value in spec.items())
    return "\n".join(lines) + "\n"


@dataclass
class GitRepo:
    path: Path
    branch: str = "main"

    @classmethod
    def create(cls, path: Path, branch: str = "main") -> GitRepo:
        path.mkdir(parents=True)
        repo = cls(path, branch)
        repo.git("init", "--quiet", "-b", branch)
        return repo

    @property
    def url(self) -> str:
        return str(self.path)

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *GIT_IDENTITY, *args], cwd=self.path, capture_output=True, text=True, check=True
        ).stdout.strip()

    def write(self, relative: str, content: str | bytes) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return target

    def remove(self, relative: str) -> None:
        self.git("rm", "--quiet", relative)

    def commit(self, message: str = "update manifests") -> str:
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def with_switches(self, count: int, folder: str = "manifests") -> str:
        """A commit with ``count`` Switch manifests in one multi-document file."""
        docs = "---\n".join(manifest("Switch", f"leaf{i}", asn=65000 + i) for i in range(count))
        self.write(f"{folder}/switches.yaml", docs)
        return self.commit(f"{count} switches")
