#!/usr/bin/env bash
# Big bodies and connection storms: sluice against nginx and HAProxy, on
# loopback, in one run (see bench/README.md, "Big bodies and storms").
#
#   bench/heavy.sh                                   # 3 rounds, ~10 minutes after the build
#   HEAVY_ROUNDS=1 HEAVY_SECONDS=3 bench/heavy.sh    # smoke run
#   HEAVY_PARTS=storm bench/heavy.sh                 # only the storm
#
# Backends: one nginx worker serving a 1 MiB and a 1 GiB file (sendfile)
# and a small fixed body, and an upload sink (bench/heavy.py sink) that
# reads every body to its end before answering. The three proxies route
# /upload to the sink and everything else to nginx. The proxy under test
# is pinned to one core, the clients and the backends to the other.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

ROUNDS=${HEAVY_ROUNDS:-3}             # rounds over every case
SECONDS_1M=${HEAVY_SECONDS:-5}         # seconds per 1 MiB run (wrk, h2load)
TRANSFERS=${HEAVY_TRANSFERS:-3}        # 1 GiB transfers per target per round
STORM=${HEAVY_STORM:-10000}            # connections opened at once
STORM_ROUNDS=${HEAVY_STORM_ROUNDS:-3}  # storms per proxy
PARTS=${HEAVY_PARTS:-bodies storm}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
SLUICE=${HEAVY_SLUICE:-}               # a sluice binary to measure instead of building one
BODY="hello from a sluice bench backend, a small fixed body"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in HEAVY_ROUNDS:$ROUNDS HEAVY_SECONDS:$SECONDS_1M HEAVY_TRANSFERS:$TRANSFERS HEAVY_STORM:$STORM HEAVY_STORM_ROUNDS:$STORM_ROUNDS; do
  [[ ${v#*:} =~ ^[0-9]+$ ]] && ((${v#*:} >= 1)) || die "${v%%:*} must be a whole number ≥ 1, got '${v#*:}'"
done
((STORM <= 15000)) || die "HEAVY_STORM is at most 15000 (descriptor limits)"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
command -v nstat >/dev/null || missing+=(iproute2)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
    added=1
  fi
  rc=0
  "${SUDO[@]}" apt-get update -q >&2 || rc=$?
  ((rc)) || "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || rc=$?
  if ((added)); then "${SUDO[@]}" rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get failed (exit $rc)"
fi
(($(ulimit -Hn) >= STORM + 1000)) || die "the descriptor limit ($(ulimit -Hn)) is below HEAVY_STORM + 1000"
ulimit -n "$(ulimit -Hn)"

if [[ -z $SLUICE ]]; then
  log "building sluice-dataplane (profile release-lto)"
  (cd "$ROOT" && cargo build --profile release-lto -q -p sluice-dataplane)
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  SLUICE="$TARGET_DIR/release-lto/sluice-dataplane"
fi
[[ -x $SLUICE ]] || die "no binary at $SLUICE"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-heavy.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ON_PROXY_CORE=(taskset -c "$PROXY_CPU")
ON_LOAD_CORE=(taskset -c "$LOAD_CPU")
measure() { python3 "$BENCH_DIR/measure.py" "$@"; }
start() {
  local name=$1
  shift
  "$@" >"$TMP/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
ready() {
  if ! measure wait "$3" "$4" 15 || ! kill -0 "$2" 2>/dev/null; then
    log "$1 did not come up; its log:"
    sed 's/^/  /' "$TMP/$1.log" >&2 || true
    exit 1
  fi
}

read -r -a P <<<"$(measure ports 9)"
FILES_PORT=${P[0]} SINK_PORT=${P[1]}
NGINX_PORT=${P[2]} NGINX_H2=${P[3]} HAPROXY_PORT=${P[4]} HAPROXY_H2=${P[5]}
SLUICE_PORT=${P[6]} SLUICE_ADMIN=${P[7]}

# The bodies: a sparse 1 GiB file (served from the page cache's zero pages,
# so the backend's disk does not count) and 1 MiB of data.
mkdir -p "$TMP/www"
truncate -s 1G "$TMP/www/1g"
head -c 1048576 /dev/urandom >"$TMP/www/1m"
chmod 644 "$TMP/www/1g" "$TMP/www/1m"
cat >"$TMP/post1m.lua" <<EOF
wrk.method = "POST"
local f = io.open("$TMP/www/1m", "rb")
wrk.body = f:read("*a")
f:close()
EOF

nginx_common() {
  mkdir -p "$1"
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 40000;
pid $1/nginx.pid;
error_log $1/error.log crit;
events { worker_connections 20000; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $1/client_body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
EOF
}

{
  nginx_common "$TMP/backend"
  cat <<EOF
  sendfile on;
  server {
    listen 127.0.0.1:$FILES_PORT;
    root $TMP/www;
    location = / { default_type text/plain; return 200 "$BODY"; }
  }
}
EOF
} >"$TMP/backend.conf"

# nginx as an operator streams big bodies: no request buffering, no
# spooling of responses to disk.
{
  nginx_common "$TMP/nginx"
  cat <<EOF
  upstream files { server 127.0.0.1:$FILES_PORT; keepalive 64; keepalive_requests 1000000; }
  upstream sink { server 127.0.0.1:$SINK_PORT; keepalive 64; keepalive_requests 1000000; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_request_buffering off;
  proxy_max_temp_file_size 0;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    listen 127.0.0.1:$NGINX_H2 http2;
    location / { proxy_pass http://files; }
    location /upload { proxy_pass http://sink; }
  }
}
EOF
} >"$TMP/nginx.conf"

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 16000
  # The descriptor limit may be below 2 x maxconn; a storm needs one per
  # client connection and a few for the backends.
  no strict-limits
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
  option forwardfor
  http-reuse always
frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
  bind 127.0.0.1:$HAPROXY_H2 proto h2
  use_backend sink if { path_beg /upload }
  default_backend files
backend files
  server f 127.0.0.1:$FILES_PORT
backend sink
  server s 127.0.0.1:$SINK_PORT
EOF

cat >"$TMP/sluice.yaml" <<EOF
pools:
  - name: sink
    hosts: ["*"]
    pathPrefix: /upload
    endpoints: [{address: 127.0.0.1:$SINK_PORT}]
  - name: files
    hosts: ["*"]
    pathPrefix: /
    endpoints: [{address: 127.0.0.1:$FILES_PORT}]
    # The storm's 10,000 requests at once would meet the circuit breaker's
    # defaults (1,024 requests in flight, 1,024 endpoint connections: 503
    # past them); nginx and HAProxy have no such limits here. Endpoint
    # connections stay below the descriptor limit with the clients'.
    circuitBreaker: {maxConnections: 9000, maxRequests: 20000, maxPendingRequests: 20000}
EOF

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then COMMIT="$COMMIT (with local changes)"; fi
{
  echo "# Sluice big-body and connection-storm benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(uname -srm); ${CPU_MODEL:-unknown CPU}; nproc $(nproc); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- sluice $COMMIT; $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v 2>&1 | head -1 | sed 's/ - https.*//'); $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'); $(h2load --version | head -1); $(curl --version | head -1 | awk '{print $1, $2}')"
  echo "- bodies: $ROUNDS round(s), targets rotated each round; 1 GiB: $TRANSFERS transfer(s) per target (curl, h2load -n1); 1 MiB: $SECONDS_1M s of wrk -t1 -c8 / h2load -c8 -m1; storm: $STORM connections x $STORM_ROUNDS round(s)"
  echo "- proxy under test on core $PROXY_CPU; clients and backends on core $LOAD_CPU; net.core.somaxconn $(cat /proc/sys/net/core/somaxconn)"
} >"$TMP/header.md"
cat "$TMP/header.md" >&2

start backend "${ON_LOAD_CORE[@]}" nginx -p "$TMP/backend" -c "$TMP/backend.conf" -e "$TMP/backend/error.log"
BACKEND_PID=$LAST_PID
start sink "${ON_LOAD_CORE[@]}" python3 "$BENCH_DIR/heavy.py" sink "$SINK_PORT"
SINK_PID=$LAST_PID
start nginx "${ON_PROXY_CORE[@]}" nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log"
NGINX_PID=$LAST_PID
start haproxy "${ON_PROXY_CORE[@]}" haproxy -db -f "$TMP/haproxy.cfg"
HAPROXY_PID=$LAST_PID
# Idle client connections kept as long as the anchors keep theirs (nginx's
# keepalive_timeout and HAProxy's http-keep-alive, 300 s above), so that no
# proxy's idle figures count connections it already closed.
start sluice env RUST_LOG=warn "${ON_PROXY_CORE[@]}" "$SLUICE" --config "$TMP/sluice.yaml" \
  --http "127.0.0.1:$SLUICE_PORT" --https off --admin "127.0.0.1:$SLUICE_ADMIN" --workers 1 --grace-period 1s \
  --header-read-timeout 300s --http2-idle-timeout 300s
SLUICE_PID=$LAST_PID

ready backend "$BACKEND_PID" "http://127.0.0.1:$FILES_PORT/" "$BODY"
ready nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/" "$BODY"
ready haproxy "$HAPROXY_PID" "http://127.0.0.1:$HAPROXY_PORT/" "$BODY"
ready sluice "$SLUICE_PID" "http://127.0.0.1:$SLUICE_PORT/" "$BODY"
kill -0 "$SINK_PID" || die "the upload sink did not start"

cat >"$TMP/spec.json" <<EOF
{
  "taskset": ["taskset", "-c", "$LOAD_CPU"],
  "files": {"1m": "$TMP/www/1m", "1g": "$TMP/www/1g"},
  "lua": "$TMP/post1m.lua",
  "transfers_1g": $TRANSFERS,
  "targets": {
    "direct": {"h1": "http://127.0.0.1:$FILES_PORT", "h2": null, "pid": null, "port": $FILES_PORT},
    "nginx": {"h1": "http://127.0.0.1:$NGINX_PORT", "h2": "http://127.0.0.1:$NGINX_H2", "pid": $NGINX_PID, "port": $NGINX_PORT},
    "haproxy": {"h1": "http://127.0.0.1:$HAPROXY_PORT", "h2": "http://127.0.0.1:$HAPROXY_H2", "pid": $HAPROXY_PID, "port": $HAPROXY_PORT},
    "sluice": {"h1": "http://127.0.0.1:$SLUICE_PORT", "h2": "http://127.0.0.1:$SLUICE_PORT", "pid": $SLUICE_PID, "port": $SLUICE_PORT}
  }
}
EOF
# The direct upload goes to the sink itself.
python3 - "$TMP/spec.json" "$SINK_PORT" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["targets"]["direct"]["upload"] = f"http://127.0.0.1:{sys.argv[2]}"
json.dump(spec, open(sys.argv[1], "w"))
EOF

: >"$TMP/bodies.jsonl"
: >"$TMP/storm.jsonl"
for part in $PARTS; do
  case $part in
  bodies) python3 "$BENCH_DIR/heavy.py" bodies "$TMP/spec.json" "$ROUNDS" "$SECONDS_1M" "$(measure clk)" "$TMP/bodies.jsonl" ;;
  storm) python3 "$BENCH_DIR/heavy.py" storm "$TMP/spec.json" "$STORM" "$STORM_ROUNDS" "$TMP/storm.jsonl" ;;
  *) die "unknown part '$part' in HEAVY_PARTS (bodies storm)" ;;
  esac
done

for name in nginx haproxy sluice; do
  if [[ -s $TMP/$name.log ]]; then
    log "$name wrote to its log (first lines):"
    head -n 5 "$TMP/$name.log" | sed 's/^/  /' >&2
  fi
  pid_var=${name^^}_PID
  kill -0 "${!pid_var}" 2>/dev/null || { sed 's/^/  /' "$TMP/$name.log" >&2; die "$name exited during the run"; }
done
mkdir -p "$BENCH_DIR/results"
python3 "$BENCH_DIR/heavy.py" report "$TMP/header.md" "$TMP/bodies.jsonl" "$TMP/storm.jsonl" >"$TMP/report.md"
cp "$TMP/report.md" "$BENCH_DIR/results/heavy-latest.md"
echo
cat "$TMP/report.md"
log "written to bench/results/heavy-latest.md"
