#!/usr/bin/env bash
# Installs and starts what obsdeploy's tests and demo need on a fresh Debian/Ubuntu machine:
# Docker Engine, compose v2, an OCI registry on 127.0.0.1:5000, sshd (binary only: tests and
# the demo start their own instances on loopback), and the project in ./.venv.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need_pkgs+=(busybox-static)
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v git >/dev/null || need_pkgs+=(git)
command -v sudo >/dev/null || need_pkgs+=(sudo)  # obsdeploy setup --sudo, as a deploy user
# The watch window's Prometheus checks and the metrics file (SPEC §16): tests start their own
# instances on loopback (policy-rc.d below keeps the packages' services from starting).
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need_pkgs+=(prometheus-node-exporter)
# debootstrap: the end-to-end test of examples/observer builds its python base image locally.
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
# The swarm suite (issue 16): network namespaces and veths (ip), engines entered into them
# (nsenter), HTTP from inside them (curl).
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
command -v curl >/dev/null || need_pkgs+=(curl)
# agent.secret_sources of kind age: the tests decrypt with Debian's age (and age-keygen).
command -v age >/dev/null || need_pkgs+=(age)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
# The system python3 too: SSH sessions of a test deploy user (and obsdeploy setup) use it.
[ ! -x /usr/bin/python3 ] || /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null \
  || need_pkgs+=(python3-venv)
# The reverse proxies of SPEC §15; the tests start their own instances on loopback.
command -v caddy >/dev/null || need_pkgs+=(caddy)
[ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  # Packages that ship a service (prometheus, node_exporter, caddy, nginx) must not start it
  # on install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import server_agent, deploy_tool, pytest, testinfra' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing obsdeploy into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[test]"
  touch .venv/.installed
fi

# Compose v2 as a CLI plugin, so `docker compose` works for every process, as on a server.
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
if ! docker compose version >/dev/null 2>&1; then
  echo "setup: installing the compose v2 plugin"
  $SUDO mkdir -p "$(dirname "$PLUGIN")"
  $SUDO cp .venv/bin/docker-compose "$PLUGIN"
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  $SUDO sh -c 'nohup dockerd >/var/log/obsdeploy-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/obsdeploy-dockerd.log" >&2; exit 1; }
fi

# The demo's registry on 127.0.0.1:5000 (tests start their own on free ports).
if ! (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null; then
  echo "setup: starting the registry on 127.0.0.1:5000"
  $SUDO mkdir -p /var/lib/obsdeploy-registry /etc/obsdeploy
  $SUDO tee /etc/obsdeploy/registry.yml >/dev/null <<'YML'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/obsdeploy-registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
YML
  $SUDO sh -c 'nohup docker-registry serve /etc/obsdeploy/registry.yml >/var/log/obsdeploy-registry.log 2>&1 &'
  for _ in $(seq 1 40); do (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null && break; sleep 0.25; done
fi
echo "setup: ready (docker $(docker version -f '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || echo compose?), venv $ROOT/.venv)"
