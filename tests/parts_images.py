"""Real service images for the tests (issue 29), built here from Debian's packages, since no
image can be pulled: a debootstrapped bookworm minbase imported as a base (the suite's one debootstrap), then
the python:3.11-slim stand-in, PostgreSQL, Redis, MariaDB, nginx and a Python web app base
(Flask, gunicorn, the redis / MySQL / PostgreSQL drivers) as `docker build`s FROM it, one
apt-get layer each.

Each image is tagged by a content hash of what makes it (its Dockerfile, the files it copies,
the base's hash), `obs-test/NAME:<hash12>`: an engine that already has that tag reuses it,
so a machine pays each build once, and a changed recipe is a new tag, never a stale image.
A file lock keeps two test sessions on one machine from building the same image at once.
Plain Python, no pytest: `python -m tests.parts_images` builds them all and prints the time
each took."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.parts_debian import SOURCES, SUITE, debian_mirror

REPO = Path(__file__).resolve().parent.parent

NAMESPACE = "obs-test"
LOCK = Path("/var/tmp/obs-test-images.lock")

# The base: what is written into the debootstrapped root before it is imported.
# policy-rc.d answering 101 ("action forbidden") makes a package's maintainer scripts skip
# starting its service: nothing but the container's command ever runs a daemon.
POLICY_RC_D = "#!/bin/sh\n# Services are started by the container's command, never by dpkg.\nexit 101\n"
# No package caches in the image: apt-get's binary caches and downloaded .debs are a third
# of a small image's size.
APT_CONF = ('APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
            'Acquire::Languages "none";\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n')
# Documentation is most of a small image and nothing here reads it (copyrights stay).
DPKG_NODOC = ("path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
              "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n"
              "path-exclude=/usr/share/locale/*\npath-exclude=/usr/share/lintian/*\n")
BASE_VERSION = "1"  # bump to rebuild the base for a reason its inputs do not show

APT = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
       "--no-install-recommends {packages} && apt-get clean && rm -rf /var/lib/apt/lists/*")

POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# PostgreSQL in the foreground as user postgres. An empty data directory is initialised once:
# superuser POSTGRES_USER with POSTGRES_PASSWORD (or the file POSTGRES_PASSWORD_FILE names),
# database POSTGRES_DB, password logins from any address.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE"); fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 > /dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Single-user mode: no server to start and stop, no port open before it is ready.
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
            | postgres --single -D "$PGDATA" postgres > /dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
"""

MARIADB_ENTRYPOINT = r"""#!/bin/sh
# MariaDB in the foreground as user mysql. An empty data directory is initialised once:
# database MARIADB_DATABASE, user MARIADB_USER with the password in the file
# MARIADB_PASSWORD_FILE (a compose secret), from any host; root only over the local socket.
set -eu
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --datadir=/var/lib/mysql --auth-root-authentication-method=socket \
        --skip-test-db > /dev/null
    # SQL string quoting: a ' in the password is doubled.
    pw=$(sed "s/'/''/g" "${MARIADB_PASSWORD_FILE:?set MARIADB_PASSWORD_FILE}")
    mariadbd --bootstrap --datadir=/var/lib/mysql --log-warnings=0 <<SQL
FLUSH PRIVILEGES;
CREATE DATABASE \`${MARIADB_DATABASE:?}\`;
CREATE USER '${MARIADB_USER:?}'@'%' IDENTIFIED BY '$pw';
GRANT ALL ON \`${MARIADB_DATABASE}\`.* TO '${MARIADB_USER}'@'%';
SQL
fi
exec mariadbd --datadir=/var/lib/mysql --bind-address=0.0.0.0 --skip-name-resolve "$@"
"""


@dataclass(frozen=True)
class Recipe:
    """One image: a Dockerfile whose FROM is `{base}`, and the files it copies."""

    name: str
    dockerfile: str
    files: Mapping[str, str] = field(default_factory=dict)
    executable: tuple[str, ...] = ()


RECIPES = (
    # The stand-in for python:3.11-slim that examples/observer's Dockerfile starts FROM
    # (tests/parts_debian.py): bookworm's interpreter (python3-minimal) and its standard library
    # (http.server, json, logging), and `python` as the Dockerfile calls it.
    Recipe("python", f"""\
FROM {{base}}
RUN {APT.format(packages="python3-minimal libpython3.11-stdlib ca-certificates")} \\
 && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
"""),
    Recipe("postgres", f"""\
FROM {{base}}
COPY entrypoint.sh /usr/local/bin/obs-postgres
# The package makes a cluster of its own (15/main); this image keeps its data in PGDATA.
RUN {APT.format(packages="postgresql-15")} \\
 && pg_dropcluster 15 main \\
 && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \\
 && install -d -o postgres -g postgres /run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/obs-postgres"]
""", {"entrypoint.sh": POSTGRES_ENTRYPOINT}, ("entrypoint.sh",)),
    Recipe("redis", f"""\
FROM {{base}}
RUN {APT.format(packages="redis-server")} \\
 && install -d -o redis -g redis /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", \
"--appendonly", "yes"]
"""),
    Recipe("mariadb", f"""\
FROM {{base}}
COPY entrypoint.sh /usr/local/bin/obs-mariadb
# The package initialises /var/lib/mysql itself; the entrypoint does, with the project's users.
RUN {APT.format(packages="mariadb-server")} \\
 && rm -rf /var/lib/mysql/* \\
 && install -d -o mysql -g mysql /run/mysqld /var/lib/mysql
USER mysql
EXPOSE 3306
ENTRYPOINT ["/usr/local/bin/obs-mariadb"]
""", {"entrypoint.sh": MARIADB_ENTRYPOINT}, ("entrypoint.sh",)),
    Recipe("nginx", f"""\
FROM {{base}}
# The project brings its own server block (conf.d); the logs go to the container's output.
RUN {APT.format(packages="nginx-light")} \\
 && rm -f /etc/nginx/sites-enabled/default \\
 && ln -sf /dev/stdout /var/log/nginx/access.log \\
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""),
    Recipe("pyapp", f"""\
FROM {{base}}
RUN {APT.format(packages="python3-flask python3-redis python3-pymysql python3-psycopg2 gunicorn")}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
"""),
)
NAMES = tuple(r.name for r in RECIPES)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _has(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True,
                          timeout=60).returncode == 0


def _sources() -> str:
    """The machine's apt sources for the image (deb822 or one-line), else its mirror's main."""
    for f in sorted(SOURCES.glob("*.sources")):
        if "/debian" in f.read_text():
            return f.read_text()
    return f"Types: deb\nURIs: {debian_mirror()}\nSuites: {SUITE}\nComponents: main\n"


@contextmanager
def _machine_lock() -> Iterator[None]:
    """One builder per machine: a second session waits, then finds the images built."""
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Built:
    """The images' references by name, and how long each build took (absent: cached)."""

    refs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def base_tag() -> str:
    sources = _sources()
    return f"{NAMESPACE}/debian:{_digest(BASE_VERSION, SUITE, sources, POLICY_RC_D, APT_CONF, DPKG_NODOC)}"


def _build_base(tag: str) -> None:
    if not shutil.which("debootstrap"):
        raise FileNotFoundError("debootstrap (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="obs-debootstrap-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        # The excludes apply to what debootstrap itself unpacks, too.
        (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True)
        (root / "etc/dpkg/dpkg.cfg.d/90obs-test-nodoc").write_text(DPKG_NODOC)
        res = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root), debian_mirror()],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {(res.stdout + res.stderr)[-2000:]}")
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        (root / "etc/apt/apt.conf.d/90obs-test").write_text(APT_CONF)
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(_sources())
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info",
                     "usr/share/locale"):
            shutil.rmtree(root / junk, ignore_errors=True)
        # What debootstrap unpacked before the excludes applied (copyrights stay).
        for doc in (root / "usr/share/doc").rglob("*"):
            if doc.is_file() and doc.name != "copyright":
                doc.unlink()
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "--change", 'CMD ["bash"]', "-", tag],
                             stdin=tar.stdout, capture_output=True, text=True, timeout=600)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise RuntimeError(f"import of the debootstrapped root failed: {imp.stderr[-2000:]}")


def recipe_tag(recipe: Recipe, base: str) -> str:
    dockerfile = recipe.dockerfile.format(base=base)
    files = [f"{n}\0{c}\0{n in recipe.executable}" for n, c in sorted(recipe.files.items())]
    return f"{NAMESPACE}/{recipe.name}:{_digest(dockerfile, *files)}"


def _build(recipe: Recipe, base: str, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"obs-image-{recipe.name}-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(recipe.dockerfile.format(base=base))
        for name, content in recipe.files.items():
            (Path(ctx) / name).write_text(content)
            if name in recipe.executable:
                (Path(ctx) / name).chmod(0o755)
        res = subprocess.run(["docker", "build", "--rm", "--force-rm", "-q", "-t", tag, ctx],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(f"docker build of {tag} failed: {(res.stdout + res.stderr)[-3000:]}")


def ensure_images(names: tuple[str, ...] = NAMES) -> Built:
    """The images named (all by default) and the base, built when the engine lacks them."""
    built = Built()
    base = base_tag()
    # The lock is taken per image: a session that needs one image waits for that one, not
    # for every build of the background builder (conftest.py) that holds the lock meanwhile.
    with _machine_lock():
        if not _has(base):
            start = time.monotonic()
            _build_base(base)
            built.seconds["debian"] = time.monotonic() - start
    built.refs["debian"] = base
    for recipe in RECIPES:
        if recipe.name not in names:
            continue
        tag = recipe_tag(recipe, base)
        with _machine_lock():
            if not _has(tag):
                start = time.monotonic()
                _build(recipe, base, tag)
                built.seconds[recipe.name] = time.monotonic() - start
        built.refs[recipe.name] = tag
    return built


def image_size_mb(ref: str) -> float:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return int(out) / 1e6


def build_in_background(log: Path) -> subprocess.Popen[bytes]:
    """Start building every image (`python -m tests.parts_images`) in a process of its own,
    its output in `log`: a test session starts it as it collects, so that a fresh machine's
    builds overlap other tests instead of holding up the first test that needs an image (it
    waits on the machine lock, then finds the images). It ends with a SIGTERM, stopping the
    build it runs."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.parts_images"], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _interrupted(signum: int, _frame: object) -> None:
    # subprocess.run kills its child (debootstrap, docker build) on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    result = ensure_images()
    for name, ref in result.refs.items():
        took = result.seconds.get(name)
        print(f"{name:9} {ref:28} {image_size_mb(ref):7.1f} MB  "
              + (f"built in {took:.0f} s" if took is not None else "cached"))
