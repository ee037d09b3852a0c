"""A real OpenSSH server on loopback standing in for a VM (SPEC §13), and an htpasswd file for
the registry. Plain Python, no pytest, so bench/ can use it too.

`Sshd(workdir).start()` runs `/usr/sbin/sshd -D` on a free 127.0.0.1 port with its own host
key, an authorized_keys holding a freshly generated client key, and root login by key only.
`env` is set in every session with sshd's `SetEnv` (e.g. `OBS_AGENT_ROOT`, so each instance has
its own agent root); `known_hosts_line` is the line a client needs to trust it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests import runs
from tests.parts import VENV_BIN, free_port, wait_port

SSHD = Path("/usr/sbin/sshd")
AGENT = VENV_BIN / "obs-agent"


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)


@dataclass
class Sshd:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    user: str = "root"
    # A non-root user's sshd reads the authorized keys as that user, who cannot enter the
    # test's directories: with this, the client key goes to ~USER/.ssh/authorized_keys.
    keys_in_home: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        key = (self.host_key.with_suffix(".pub")).read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.known_hosts_line)
        return path

    def start(self) -> Sshd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        if not self.host_key.exists():
            keygen(self.host_key, "obsdeploy-test-host")
            keygen(self.client_key, "obsdeploy-test-client")
        auth = self.workdir / "authorized_keys"
        auth.write_text(self.client_key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        if self.keys_in_home:
            import pwd
            import shutil

            pw = pwd.getpwnam(self.user)
            ssh_dir = Path(pw.pw_dir) / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            shutil.copy(auth, ssh_dir / "authorized_keys")
            for path in (ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            auth = Path(".ssh/authorized_keys")  # relative: to the user's home
        setenv = " ".join(f'"{k}={v}"' for k, v in self.env.items())
        config = self.workdir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\nPidFile {self.workdir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {auth}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nLogLevel INFO\nMaxStartups 50\n"
            "Subsystem sftp internal-sftp\n"
            + (f"SetEnv {setenv}\n" if setenv else "")
        )
        check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t: {check.stderr}")
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(config), "-E", str(self.workdir / "sshd.log")],
        )
        runs.record_process(self.proc.pid, "sshd")
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def log(self) -> str:
        p = self.workdir / "sshd.log"
        return p.read_text(errors="replace") if p.exists() else ""


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    """An htpasswd file with one bcrypt entry (`htpasswd -B` when present, else python bcrypt)."""
    import shutil

    if shutil.which("htpasswd"):
        subprocess.run(["htpasswd", "-B", "-i", "-c", str(path), user], input=password.encode(),
                       check=True, capture_output=True)
    else:
        import bcrypt

        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        path.write_text(f"{user}:{hashed}\n")
    os.chmod(path, 0o600)
    return path
