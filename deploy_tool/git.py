"""The app's git repository, through `server_agent.common.runner` (argv lists, logged, redacted)."""

from __future__ import annotations

import re
from pathlib import Path

from server_agent.common.errors import CommandError, UsageError
from server_agent.common.runner import Result, run


class Git:
    def __init__(self, repo: Path) -> None:
        self.repo = repo

    def _git(self, *args: str, check: bool = True, timeout: float = 120) -> Result:
        return run(["git", "-C", str(self.repo), *args], check=check, timeout=timeout)

    def head(self) -> str:
        res = self._git("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
        if res.returncode != 0:
            inside = self._git("rev-parse", "--is-inside-work-tree", check=False)
            if inside.returncode != 0:
                raise UsageError(f"{self.repo} is not a git repository",
                                 hint="run release in the app's repository or pass --config")
            raise UsageError(f"{self.repo}: the repository has no commit yet")
        return res.stdout.strip()

    def dirty_files(self) -> list[str]:
        """Modified, staged and untracked (not ignored) files: anything a build could pick up."""
        out = self._git("status", "--porcelain=v1", "--untracked-files=normal").stdout
        return [line[3:] for line in out.splitlines() if line.strip()]

    def tag_commit(self, tag: str) -> str | None:
        res = self._git("rev-parse", "--verify", "-q", f"refs/tags/{tag}^{{commit}}", check=False)
        return res.stdout.strip() if res.returncode == 0 else None

    def create_annotated_tag(self, tag: str, message: str) -> None:
        self._git("tag", "--annotate", "--message", message, tag, "HEAD")

    def remote_tag_commit(self, remote: str, tag: str) -> str | None:
        """The commit the tag names on the remote (peeled), or None when the remote lacks it."""
        try:
            out = self._git("ls-remote", "--tags", remote, f"refs/tags/{tag}",
                            f"refs/tags/{tag}^{{}}").stdout
        except CommandError as exc:
            raise UsageError(
                f"cannot read tags of git remote {remote!r}: {exc.stderr.strip()}",
                hint="check git_remote in obsdeploy.toml (OBSDEPLOY_GIT_REMOTE)",
            ) from None
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            refs[ref.strip()] = sha.strip()
        return refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")

    def remote_tags(self, remote: str) -> list[str]:
        """The names of every tag the remote has."""
        try:
            out = self._git("ls-remote", "--tags", "--refs", remote).stdout
        except CommandError as exc:
            raise UsageError(
                f"cannot read tags of git remote {remote!r}: {exc.stderr.strip()}",
                hint="check git_remote in obsdeploy.toml (OBSDEPLOY_GIT_REMOTE)",
            ) from None
        return [line.partition("\t")[2].strip().removeprefix("refs/tags/")
                for line in out.splitlines() if "\t" in line]

    def push_tag(self, remote: str, tag: str) -> None:
        self._git("push", "--quiet", remote, f"refs/tags/{tag}:refs/tags/{tag}", timeout=300)

    def remote_url(self, remote: str) -> str | None:
        res = self._git("remote", "get-url", remote, check=False)
        url = res.stdout.strip()
        return url if res.returncode == 0 and url else None


def source_url(remote_url: str | None) -> str:
    """The OCI `source` label from a remote URL: credentials stripped, scp-style made https."""
    if not remote_url:
        return ""
    url = re.sub(r"^(\w[\w+.-]*://)[^/@]*@", r"\1", remote_url)  # drop user:token@
    m = re.fullmatch(r"[\w.-]+@([\w.-]+):(.+?)(?:\.git)?", url)  # git@github.com:o/r.git
    if m:
        return f"https://{m.group(1)}/{m.group(2)}"
    return url.removesuffix(".git") if url.startswith(("https://", "http://")) else url
