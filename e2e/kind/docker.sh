#!/usr/bin/env bash
# Offline path: makes sure Debian's docker.io is installed and that our own
# dockerd runs (its own data-root, exec-root, socket and pidfile under
# ~/.cache/thaw/kind-docker, the runc wrapper as default runtime). Reuses a
# dockerd that already runs from that pidfile. `docker.sh stop` stops it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

pidfile="$docker_state/run/docker.pid"
running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install_docker() {
  local have
  have="$(dpkg-query -W -f '${Version}' docker.io 2>/dev/null || true)"
  [[ $have == "$DOCKER_IO_VERSION" ]] && return
  log "installing docker.io $DOCKER_IO_VERSION and debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "docker.io=$DOCKER_IO_VERSION" debootstrap jq >/dev/null
}

start() {
  install_docker
  if running; then return; fi
  mkdir -p "$docker_state"/{data,exec,run,bin}
  # The wrapper's copy in the cache is what dockerd runs; refresh it each start.
  install -m 0755 "$kind_dir/runc-wrapper" "$docker_state/bin/runc-wrapper"
  log "starting dockerd (log: $docker_state/dockerd.log)"
  # setsid: the daemon outlives this script and ignores the caller's signals.
  setsid dockerd \
    --data-root "$docker_state/data" --exec-root "$docker_state/exec" \
    -H "$DOCKER_HOST" --pidfile "$pidfile" \
    --add-runtime "thaw-runc=$docker_state/bin/runc-wrapper" --default-runtime thaw-runc \
    --storage-driver overlay2 --log-driver local \
    </dev/null >"$docker_state/dockerd.log" 2>&1 &
  local deadline=$((SECONDS + 60))
  until docker version >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      tail -20 "$docker_state/dockerd.log" >&2
      echo "dockerd did not answer on $DOCKER_HOST within 60 s" >&2
      exit 1
    fi
    sleep 0.5
  done
}

stop() {
  running || return 0
  local pid; pid="$(cat "$pidfile")"
  log "stopping dockerd ($pid)"
  kill "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS > deadline)) && { kill -9 "$pid"; break; }
    sleep 0.5
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
