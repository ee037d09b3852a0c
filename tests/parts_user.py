"""A real non-root Linux user, the usual VM's `deploy`/`azureuser`: created with useradd (a
unique name, a home with Debian's skeleton files, bash), optionally in the docker group, and
removed with its home afterwards. Plain Python, no pytest."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests import runs


@dataclass
class LinuxUser:
    name: str

    @classmethod
    def create(cls, *, groups: tuple[str, ...] = ()) -> LinuxUser:
        name = f"obsu{uuid.uuid4().hex[:8]}"
        runs.record("user", name)
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash",
                        *(["--groups", ",".join(groups)] if groups else []), name],
                       check=True, capture_output=True, text=True)
        # useradd leaves the password locked ("!"), and sshd without PAM refuses a locked
        # account even for key logins; "*" is no password at all, not a lock.
        subprocess.run(["usermod", "--password", "*", name], check=True, capture_output=True)
        return cls(name)

    @property
    def pw(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.name)

    @property
    def home(self) -> Path:
        return Path(self.pw.pw_dir)

    def chown(self, path: Path) -> None:
        """Give `path` and everything under it to this user."""
        subprocess.run(["chown", "-R", f"{self.pw.pw_uid}:{self.pw.pw_gid}", str(path)], check=True)

    def run(self, argv: list[str], *, groups: list[int] | None = None,
            env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run as this user, with exactly `groups` as its supplementary groups (default: its
        own, as a login would give it)."""
        pw = self.pw
        if groups is None:
            groups = os.getgrouplist(self.name, pw.pw_gid)
        base = {"HOME": pw.pw_dir, "USER": self.name, "LOGNAME": self.name,
                "PATH": "/usr/local/bin:/usr/bin:/bin"}
        return subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups,
                              env={**base, **(env or {})}, cwd=pw.pw_dir, capture_output=True,
                              text=True, timeout=timeout)

    def remove(self) -> None:
        subprocess.run(["userdel", "--force", "--remove", self.name], capture_output=True)
