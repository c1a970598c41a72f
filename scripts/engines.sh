#!/usr/bin/env bash
# Installs and starts the real container engines the docker/podman tests and builders use, on Debian 12 as root:
#   - the Debian packages (docker.io podman buildah catatonit debootstrap zstd docker-registry), if missing;
#   - dockerd (if `docker info` fails), podman's API service on .tools/engines/podman.sock, a local OCI registry;
#   - the local base image mcp-agent-cloud-base:bookworm (debootstrap, cached as a zstd tarball outside the tree),
#     imported into Docker and Podman (no registry is reachable here, so no image can be pulled).
# Writes .tools/engines/env (KEY=VALUE lines) for tests/conftest.py. Idempotent: a rerun only checks, in about 1 s.
# Daemons it starts keep running after it exits; stop them with: kill "$(cat .tools/engines/NAME.pid)".
# Env: MCPAC_SKIP_ENGINES=1 skips everything; MCPAC_CACHE_DIR (default ~/.cache/mcp-agent-cloud) holds the tarball;
#      MCPAC_TEST_REGISTRY_PORT (default 5055); MCPAC_DEBIAN_MIRROR (default: the bookworm mirror apt uses).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [ -n "${MCPAC_SKIP_ENGINES:-}" ]; then
  echo "==> MCPAC_SKIP_ENGINES set: not installing or starting Docker, Podman or the test registry"
  echo "    (the docker/podman tests then skip, or fail when CI is set)"
  exit 0
fi

DIR=$ROOT/.tools/engines
CACHE=${MCPAC_CACHE_DIR:-${HOME:-/root}/.cache/mcp-agent-cloud}
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates,nodejs
BASE_IMAGE=mcp-agent-cloud-base:$SUITE
PODMAN_BASE_IMAGE=localhost/$BASE_IMAGE
TARBALL=$CACHE/base-$SUITE.tar.zst
LABEL=org.mcp-agent-cloud.base-id
DOCKER_SOCK=/var/run/docker.sock
PODMAN_SOCK=$DIR/podman.sock
REGISTRY=127.0.0.1:${MCPAC_TEST_REGISTRY_PORT:-5055}
export CONTAINERS_CONF=$DIR/containers.conf

die() {  # die MESSAGE [HINT...]
  echo "error: $1" >&2
  shift
  for hint in "$@"; do echo "hint: $hint" >&2; done
  exit 1
}
is_root() { [ "$(id -u)" = 0 ]; }
log_tail() { [ -f "$1" ] && { echo "--- last lines of $1:" >&2; tail -n 20 "$1" >&2; }; return 0; }
pid_alive() {  # pid_alive PIDFILE: the process runs (a zombie, e.g. under a pid 1 that does not reap, does not count)
  local pid state
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) && [ -n "$state" ] && [ "$state" != Z ]
}

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9  # two concurrent runs would start two daemons

# -- Debian packages -------------------------------------------------------------------------------------------
missing=()
for pair in dockerd:docker.io docker:docker.io podman:podman buildah:buildah catatonit:catatonit \
            debootstrap:debootstrap zstd:zstd docker-registry:docker-registry; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if ! is_root || ! command -v apt-get >/dev/null; then
    die "missing ${missing[*]}: the container engines need these Debian packages" \
        "as root on Debian 12, run: apt-get update && apt-get install -y ${missing[*]}" \
        "then run scripts/engines.sh again (or set MCPAC_SKIP_ENGINES=1 to skip the docker/podman tests)"
  fi
  echo "==> installing ${missing[*]} with apt-get (about 30 s)"
  apt-get update -qq || die "apt-get update failed" "check the Debian mirror in /etc/apt/sources.list.d/"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$DIR/apt.log" 2>&1 \
    || { log_tail "$DIR/apt.log"; die "apt-get install ${missing[*]} failed (full log: $DIR/apt.log)" \
         "fix the error above, then run scripts/engines.sh again"; }
fi

# -- helpers that talk HTTP without curl (a fresh Debian has python3, not necessarily curl) -----------------------
http_ok() {  # http_ok unix:PATH|tcp:HOST:PORT URLPATH -> 0 when the answer is 2xx
  python3 - "$1" "$2" <<'EOF' 2>/dev/null
import http.client, socket, sys
target, path = sys.argv[1], sys.argv[2]
class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(target[5:])
if target.startswith("unix:"):
    conn = UnixConnection("d", timeout=5)
else:
    host, port = target[4:].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
conn.request("GET", path)
sys.exit(0 if 200 <= conn.getresponse().status < 300 else 1)
EOF
}
port_in_use() { python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)' "${1%:*}" "${1##*:}"; }
wait_for() {  # wait_for SECONDS PIDFILE LOG WHAT CMD...
  local secs=$1 pidfile=$2 log=$3 what=$4
  shift 4
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if ! pid_alive "$pidfile"; then
      log_tail "$log"
      die "$what exited during startup (log: $log)" "fix the error in the log, then run scripts/engines.sh again"
    fi
    if [ $SECONDS -ge $deadline ]; then
      log_tail "$log"
      die "$what did not answer within ${secs}s (log: $log; pid $(cat "$pidfile"))" \
          "kill $(cat "$pidfile") if it is stuck, then run scripts/engines.sh again"
    fi
    sleep 0.2
  done
}
dk() { docker -H "unix://$DOCKER_SOCK" "$@"; }
docker_ok() { timeout 15 docker -H "unix://$DOCKER_SOCK" info >/dev/null 2>&1; }

# -- dockerd ---------------------------------------------------------------------------------------------------
if ! docker_ok; then
  is_root || die "Docker does not answer on $DOCKER_SOCK and only root can start dockerd here" \
                 "start dockerd as root (or run scripts/engines.sh as root), or set MCPAC_SKIP_ENGINES=1"
  if pid_alive "$DIR/dockerd.pid"; then
    echo "==> dockerd (pid $(cat "$DIR/dockerd.pid")) is starting; waiting for it"
  else
    echo "==> starting dockerd (log: $DIR/dockerd.log)"
    # dockerd's own pidfile must not be ours: it refuses to start when that file names a live process (itself).
    # DOCKER_BUILDKIT is not set anywhere: Debian's 20.10 has no buildx, the builders use the legacy builder.
    setsid dockerd --pidfile "$DIR/dockerd.daemon.pid" >>"$DIR/dockerd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$DIR/dockerd.pid"
  fi
  wait_for 30 "$DIR/dockerd.pid" "$DIR/dockerd.log" dockerd docker_ok
fi

# -- podman: containers.conf and the API service --------------------------------------------------------------
# Without default_ulimits every `podman run` fails here with "error setting rlimit type 7: operation not permitted"
# (nproc 65536 or more fails too); no systemd, so cgroupfs and a file events logger. runc (from docker.io), not crun:
# with cgroup v1 plus a cgroup2 mount (hybrid), crun fails "cgroups in hybrid mode not supported".
conf='# Written by scripts/engines.sh; CONTAINERS_CONF points here (tests, builders, podman system service).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"'
if [ "$(cat "$CONTAINERS_CONF" 2>/dev/null)" != "$conf" ]; then
  printf '%s\n' "$conf" >"$CONTAINERS_CONF"
fi
[ ${#PODMAN_SOCK} -lt 100 ] || die "the podman socket path $PODMAN_SOCK is too long for a unix socket (max 107)" \
                                   "clone the repository to a shorter path"
podman_ok() { http_ok "unix:$PODMAN_SOCK" /_ping; }
if ! podman_ok; then
  if pid_alive "$DIR/podman.pid"; then
    echo "==> podman service (pid $(cat "$DIR/podman.pid")) is starting; waiting for it"
  else
    echo "==> starting podman system service on $PODMAN_SOCK (log: $DIR/podman.log)"
    rm -f "$PODMAN_SOCK"
    # From $DIR: conmon 2.1.6 on cgroup v1 writes its OOM marker as "oom" in its working directory (which is also
    # why podman never reports OOMKilled here).
    (cd "$DIR" && exec setsid podman system service --time=0 "unix://$PODMAN_SOCK" >>"$DIR/podman.log" 2>&1 </dev/null 9>&-) &
    echo $! >"$DIR/podman.pid"
  fi
  wait_for 30 "$DIR/podman.pid" "$DIR/podman.log" "podman system service" podman_ok
fi

# -- the base image ---------------------------------------------------------------------------------------------
# The tarball is keyed by what went into it (suite, packages); its sha256 labels the imported images, so a rebuilt
# tarball is imported again.
meta="suite=$SUITE include=$INCLUDE variant=minbase"
if [ ! -s "$TARBALL" ] || [ "$(cat "$TARBALL.meta" 2>/dev/null)" != "$meta" ]; then
  is_root || die "building the base image needs root (debootstrap)" "run scripts/engines.sh as root"
  mirror=${MCPAC_DEBIAN_MIRROR:-}
  if [ -z "$mirror" ]; then  # the mirror apt uses for bookworm: deb822 .sources first, then one-line .list files
    mirror=$(awk 'BEGIN { RS = ""; FS = "\n" }
      { uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); uris = $i }
          if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", $i); suites = " " $i " " } }
        if (suites ~ / '"$SUITE"' / && uris != "") { split(uris, u, " "); print u[1]; exit } }' \
      /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  fi
  if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && / '"$SUITE"' / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  cleanup_work() {  # debootstrap may leave /proc, /sys or /dev binds mounted in the target when it fails
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$work"
  }
  trap cleanup_work EXIT
  echo "==> building the base rootfs: debootstrap $SUITE from $mirror with $INCLUDE (about 1-2 min; log: $DIR/debootstrap.log)"
  start=$SECONDS
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/rootfs" "$mirror" >"$DIR/debootstrap.log" 2>&1 \
    || { log_tail "$DIR/debootstrap.log"; log_tail "$work/rootfs/debootstrap/debootstrap.log"
         die "debootstrap failed (log: $DIR/debootstrap.log)" \
             "check that $mirror is reachable (set MCPAC_DEBIAN_MIRROR to another mirror), then rerun scripts/engines.sh"; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/log/"*.log
  chroot "$work/rootfs" python3 -c 'import ensurepip, venv' \
    || die "the base rootfs has no working venv/ensurepip (python3-venv)" "see $DIR/debootstrap.log"
  echo "==> debootstrap took $((SECONDS - start))s ($(du -sh --one-file-system "$work/rootfs" | cut -f1)); packing $TARBALL"
  tar --numeric-owner -C "$work/rootfs" -c . | zstd -q -T0 -6 -o "$work/base.tar.zst"
  sha256sum "$work/base.tar.zst" | cut -d' ' -f1 >"$TARBALL.id"
  mv -f "$work/base.tar.zst" "$TARBALL"
  echo "$meta" >"$TARBALL.meta"
  cleanup_work
  trap - EXIT
fi
[ -s "$TARBALL.id" ] || sha256sum "$TARBALL" | cut -d' ' -f1 >"$TARBALL.id"
base_id=$(cat "$TARBALL.id")
check_base='set -e; python3 -m venv /tmp/v; /tmp/v/bin/python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"'

if [ "$(dk image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$BASE_IMAGE" 2>/dev/null)" != "$base_id" ]; then
  echo "==> importing $BASE_IMAGE into Docker from $TARBALL"
  zstd -dcq "$TARBALL" | dk import -c 'CMD ["python3"]' -c "LABEL $LABEL=$base_id" - "$BASE_IMAGE" >/dev/null
  dk run --rm "$BASE_IMAGE" sh -c "$check_base" \
    || { dk rmi -f "$BASE_IMAGE" >/dev/null 2>&1; die "python3 -m venv does not work in $BASE_IMAGE (Docker)" "delete $TARBALL and rerun scripts/engines.sh"; }
fi
if [ "$(podman image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$PODMAN_BASE_IMAGE" 2>/dev/null)" != "$base_id" ]; then
  echo "==> importing $PODMAN_BASE_IMAGE into Podman from $TARBALL"
  zstd -dcq "$TARBALL" | podman import -q -c 'CMD ["python3"]' -c "LABEL $LABEL=$base_id" - "$PODMAN_BASE_IMAGE" >/dev/null
  podman run --rm "$PODMAN_BASE_IMAGE" sh -c "$check_base" \
    || { podman rmi -f "$PODMAN_BASE_IMAGE" >/dev/null 2>&1; die "python3 -m venv does not work in $PODMAN_BASE_IMAGE (Podman)" \
           "see the podman error above; CONTAINERS_CONF=$CONTAINERS_CONF"; }
fi

# -- a local OCI registry (Debian's docker-registry, distribution 2.x) -------------------------------------------
registry_ok() { http_ok "tcp:$REGISTRY" /v2/; }
if ! registry_ok; then
  if pid_alive "$DIR/registry.pid"; then
    echo "==> registry (pid $(cat "$DIR/registry.pid")) is starting; waiting for it"
  else
    port_in_use "$REGISTRY" && die "$REGISTRY is in use by something that is not an OCI registry" \
                                   "set MCPAC_TEST_REGISTRY_PORT to a free port and rerun scripts/engines.sh"
    mkdir -p "$DIR/registry/data"
    cat >"$DIR/registry/config.yml" <<EOF
# Written by scripts/engines.sh: a throwaway registry for tests, loopback only, no auth, no TLS.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
    echo "==> starting docker-registry on $REGISTRY (log: $DIR/registry.log)"
    setsid docker-registry serve "$DIR/registry/config.yml" >>"$DIR/registry.log" 2>&1 </dev/null 9>&- &
    echo $! >"$DIR/registry.pid"
  fi
  wait_for 15 "$DIR/registry.pid" "$DIR/registry.log" docker-registry registry_ok
fi

# -- what the tests (tests/conftest.py) and a platform process need --------------------------------------------
env_text="# Written by scripts/engines.sh
MCPAC_DOCKER_HOST=unix://$DOCKER_SOCK
MCPAC_PODMAN_SOCKET=unix://$PODMAN_SOCK
CONTAINERS_CONF=$CONTAINERS_CONF
MCPAC_BASE_IMAGE=$BASE_IMAGE
MCPAC_PODMAN_BASE_IMAGE=$PODMAN_BASE_IMAGE
MCPAC_BASE_TARBALL=$TARBALL
MCPAC_TEST_REGISTRY=$REGISTRY"
[ "$(cat "$DIR/env" 2>/dev/null)" = "$env_text" ] || printf '%s\n' "$env_text" >"$DIR/env"
echo "==> engines ready: docker ($DOCKER_SOCK), podman ($PODMAN_SOCK), $BASE_IMAGE, registry $REGISTRY (.tools/engines/env)"
