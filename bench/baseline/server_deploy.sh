#!/usr/bin/env bash
# server_deploy.sh ROOT TAG — the careful shell script obs-agent replaces; the baseline of bench/.
#
#   1. compose pull for TAG                      (exit 11 when it fails; nothing changed)
#   2. tar -czf of config/ and logs/ to backups/ (mode 0600, newest 5 kept; exit 4 on failure)
#   3. compose up -d with IMAGE_TAG=TAG          (compose re-creates the container)
#   4. poll Docker every second, up to HEALTH_TIMEOUT: `healthy` is success; a container that
#      exited or restarted fails at once; anything else (starting, unhealthy) keeps waiting
#   5. success: write state/last_good_tag atomically, exit 0
#      failure: compose up -d the previous good tag and poll it the same way;
#               exit 1 when it is healthy again, 3 when it is not or there was none
#
# Environment: PROJECT (compose project, default: base name of ROOT), HEALTH_TIMEOUT (10),
# SERVICE (observer), COMPOSE_FILE_NAME (docker-compose.server.yml). Compose reads ROOT/.env.
set -euo pipefail

usage() { echo "usage: $0 ROOT TAG (TAG like v1.2.3 or v1.2.3-rc.1)" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
root=$1
tag=$2
semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$'
[[ $tag =~ $semver ]] || usage
cd "$root"

project=${PROJECT:-$(basename "$root")}
timeout=${HEALTH_TIMEOUT:-10}
service=${SERVICE:-observer}
file=${COMPOSE_FILE_NAME:-docker-compose.server.yml}

log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
compose() { # compose TAG ARGS...
  local t=$1
  shift
  IMAGE_TAG=$t docker compose -p "$project" -f "$file" "$@"
}

# 0 healthy; 1 failed (exited, restarting, or not healthy within the timeout)
wait_healthy() { # wait_healthy TAG
  local deadline=$(( $(date +%s) + timeout )) cid st restarts health
  while :; do
    cid=$(compose "$1" ps -a -q "$service" 2>/dev/null | head -n 1 || true)
    if [[ -n $cid ]]; then
      read -r st restarts health < <(docker inspect -f \
        '{{.State.Status}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \
        "$cid" 2>/dev/null || echo "gone 0 none")
      case $st in
        exited|dead|gone) log "$1: container $st"; return 1 ;;
        restarting) log "$1: container restarting"; return 1 ;;
      esac
      if (( restarts > 0 )); then log "$1: container restarted $restarts time(s)"; return 1; fi
      if [[ $health == healthy || $health == none ]]; then log "$1: $health"; return 0; fi
    fi
    if (( $(date +%s) >= deadline )); then log "$1: not healthy within ${timeout}s"; return 1; fi
    sleep 1
  done
}

mkdir -p state backups
prev=""
[[ -f state/last_good_tag ]] && prev=$(<state/last_good_tag)

log "pull $tag"
if ! compose "$tag" pull --quiet; then
  log "pull of $tag failed; nothing changed"
  exit 11
fi

archive="backups/backup-$(date -u +%Y%m%dT%H%M%S%NZ).tar.gz"
log "backup to $archive"
# GNU tar exits 1 when a file changed while it was read (the running release appends to its
# archive): the backup is still written, so that is a warning, not a failure.
rc=0
( umask 077; tar -czf "$archive" config logs ) || rc=$?
if (( rc > 1 )); then log "backup failed (tar exit $rc); nothing changed"; exit 4; fi
(( rc == 0 )) || log "backup: some files changed while they were read (tar exit 1)"
# keep the newest 5
ls -1t backups/backup-*.tar.gz 2>/dev/null | tail -n +6 | while read -r old; do rm -f -- "$old"; done

log "up $tag"
compose "$tag" up -d --quiet-pull
if wait_healthy "$tag"; then
  printf '%s\n' "$tag" > state/last_good_tag.tmp
  mv -f state/last_good_tag.tmp state/last_good_tag
  log "$tag is healthy"
  exit 0
fi

if [[ -z $prev || $prev == "$tag" ]]; then
  log "$tag failed and there is no previous good release"
  exit 3
fi
log "$tag failed; rolling back to $prev"
compose "$prev" up -d --quiet-pull
if wait_healthy "$prev"; then
  log "rolled back to $prev"
  exit 1
fi
log "rollback to $prev failed"
exit 3
