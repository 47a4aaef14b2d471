#!/usr/bin/env bash
# Load benchmark: sluice against nginx and HAProxy, all on loopback, in one run.
#
# Installs nginx, HAProxy and wrk from Debian when missing, builds sluice in
# release, starts identical backends (one nginx serving a small fixed body on
# several ports), then measures direct-to-backend, nginx, HAProxy and sluice,
# interleaved over several rounds. The proxy under test is pinned to one core
# and wrk plus the backends to another, so the proxy's CPU time per request is
# its own. Prints a Markdown report and writes it to bench/results/latest.md.
#
#   bench/run.sh                                  # 5 rounds of 10 s each
#   BENCH_ROUNDS=1 BENCH_SECONDS=3 bench/run.sh   # smoke run
#   BENCH_INSTRUCTIONS=0 bench/run.sh             # without the callgrind part
#
# Then, unless BENCH_INSTRUCTIONS=0, each proxy runs once more under
# valgrind's callgrind, which counts the user-space instructions it executes
# per request: a figure that noise from other tenants does not move, unlike
# CPU time on a shared machine.
#
# See bench/README.md for what each number means.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

ROUNDS=${BENCH_ROUNDS:-5}            # rounds over all scenarios
DURATION=${BENCH_SECONDS:-10}        # seconds per wrk run
CONNECTIONS=${BENCH_CONNECTIONS:-64} # wrk connections (one wrk thread)
BACKENDS=${BENCH_BACKENDS:-4}        # backend ports every proxy balances over
WARMUP=${BENCH_WARMUP:-2}            # unmeasured seconds per scenario first
SCENARIO_LIST=${BENCH_SCENARIOS:-direct nginx haproxy sluice} # a subset, to iterate
INSTRUCTIONS=${BENCH_INSTRUCTIONS:-1} # 0: skip the callgrind part
CG_SECONDS=5                          # measured seconds per proxy under callgrind
CG_H2_CONNECTIONS=8                   # h2c under callgrind: connections ...
CG_H2_STREAMS=8                       # ... and streams in flight on each
PROXY_CPU=${BENCH_PROXY_CPU:-0}      # core of the proxy under test
LOAD_CPU=${BENCH_LOAD_CPU:-1}        # core of wrk and the backends
IDLE_POOLS=100
IDLE_ENDPOINTS=10
# The backends' answer: fixed, small, free of nginx-special characters.
BODY="hello from a sluice bench backend, a small fixed body"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in BENCH_ROUNDS:$ROUNDS BENCH_SECONDS:$DURATION BENCH_CONNECTIONS:$CONNECTIONS \
  BENCH_BACKENDS:$BACKENDS BENCH_WARMUP:$WARMUP BENCH_PROXY_CPU:$PROXY_CPU BENCH_LOAD_CPU:$LOAD_CPU; do
  [[ ${v#*:} =~ ^[0-9]+$ ]] || die "${v%%:*} must be a whole number, got '${v#*:}'"
done
((ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1 && BACKENDS >= 1)) ||
  die "BENCH_ROUNDS, BENCH_SECONDS, BENCH_CONNECTIONS and BENCH_BACKENDS must be at least 1"

read -r -a SCENARIOS <<<"$SCENARIO_LIST"
((${#SCENARIOS[@]} >= 1)) || die "BENCH_SCENARIOS is empty"
for sc in "${SCENARIOS[@]}"; do
  case $sc in direct | nginx | haproxy | sluice) ;; *) die "unknown scenario '$sc' in BENCH_SCENARIOS (direct nginx haproxy sluice)" ;; esac
done

# --- tools -------------------------------------------------------------------

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

install_tools() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v python3 >/dev/null || missing+=(python3)
  if [[ $INSTRUCTIONS != 0 ]]; then
    command -v valgrind >/dev/null || missing+=(valgrind)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
  fi
  ((${#missing[@]} == 0)) && return
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  # Debian starts a package's service on install (nginx on :80); a
  # policy-rc.d that answers 101 stops that. Add one only if there is none.
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
    added=1
  fi
  local rc=0
  # apt's chatter goes to stderr: stdout carries only the report.
  "${SUDO[@]}" apt-get update -q >&2 || rc=$?
  if ((rc == 0)); then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || rc=$?
  fi
  if ((added)); then "${SUDO[@]}" rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get failed (exit $rc)"
}
install_tools
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"

log "building sluice-dataplane (profile release-lto, as its image is built)"
(cd "$ROOT" && cargo build --profile release-lto -q -p sluice-dataplane)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
SLUICE="$TARGET_DIR/release-lto/sluice-dataplane"
[[ -x $SLUICE ]] || die "no binary at $SLUICE"

# --- processes ---------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
# nginx workers drop to nobody when started as root; let them into the dir.
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

NPROC=$(nproc)
if ((NPROC >= 2)); then
  ((PROXY_CPU < NPROC && LOAD_CPU < NPROC && PROXY_CPU != LOAD_CPU)) ||
    die "BENCH_PROXY_CPU=$PROXY_CPU and BENCH_LOAD_CPU=$LOAD_CPU must be distinct cores below $NPROC"
  ON_PROXY_CORE=(taskset -c "$PROXY_CPU")
  ON_LOAD_CORE=(taskset -c "$LOAD_CPU")
  PINNING="proxy under test on core $PROXY_CPU; wrk and backends on core $LOAD_CPU"
else
  ON_PROXY_CORE=()
  ON_LOAD_CORE=()
  PINNING="NOT pinned: only $NPROC core, so proxy, wrk and backends share it (CPU per request still comes from the proxy's own CPU time)"
  log "warning: $PINNING"
fi

measure() { python3 "$BENCH_DIR/measure.py" "$@"; }

# start NAME CMD...: runs CMD in the background, logging to $TMP/NAME.log;
# its pid lands in LAST_PID and in PIDS for the cleanup.
start() {
  local name=$1
  shift
  "$@" >"$TMP/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# stop PID: ends a process started above and forgets it.
stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local rest=() pid
  for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || rest+=("$pid"); done
  PIDS=("${rest[@]}")
}

# ready NAME PID URL BODY: waits for URL to answer BODY, or fails showing the log.
ready() {
  if ! measure wait "$3" "$4" 15 || ! kill -0 "$2" 2>/dev/null; then
    log "$1 did not come up; its log:"
    sed 's/^/  /' "$TMP/$1.log" >&2 || true
    exit 1
  fi
}

read -r -a PORTS <<<"$(measure ports $((BACKENDS + 10)))"
BACKEND_PORTS=("${PORTS[@]:0:BACKENDS}")
NGINX_PORT=${PORTS[BACKENDS]}
HAPROXY_PORT=${PORTS[BACKENDS + 1]}
SLUICE_PORT=${PORTS[BACKENDS + 2]}
SLUICE_ADMIN=${PORTS[BACKENDS + 3]}
IDLE_ADMIN=${PORTS[BACKENDS + 4]}
# The same three proxies under callgrind, on ports of their own.
CG_NGINX_PORT=${PORTS[BACKENDS + 5]}
CG_HAPROXY_PORT=${PORTS[BACKENDS + 6]}
CG_SLUICE_PORT=${PORTS[BACKENDS + 7]}
# Their h2c listeners (sluice serves h2c on its one port).
CG_NGINX_H2=${PORTS[BACKENDS + 8]}
CG_HAPROXY_H2=${PORTS[BACKENDS + 9]}

# nginx's temp paths default to /var/lib/nginx; keep everything in $TMP.
nginx_common() {
  local dir=$1
  mkdir -p "$dir"
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
  local dir=$1
  cat <<EOF
  access_log off;
  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
EOF
}

# Backends: one nginx worker on the load core, the same body on every port.
{
  nginx_common "$TMP/backend"
  echo "http {"
  nginx_http_common "$TMP/backend"
  echo "  server {"
  for p in "${BACKEND_PORTS[@]}"; do echo "    listen 127.0.0.1:$p;"; done
  echo "    location / { default_type text/plain; return 200 \"$BODY\"; }"
  echo "  }"
  echo "}"
} >"$TMP/backend.conf"

# nginx under test: 1 worker, keep-alive upstream, X-Forwarded-For like sluice.
{
  nginx_common "$TMP/nginx"
  echo "http {"
  nginx_http_common "$TMP/nginx"
  echo "  upstream backends {"
  for p in "${BACKEND_PORTS[@]}"; do echo "    server 127.0.0.1:$p;"; done
  echo "    keepalive 64;"
  echo "    keepalive_requests 1000000;"
  echo "  }"
  echo "  server {"
  echo "    listen 127.0.0.1:$NGINX_PORT;"
  echo "    location / {"
  echo "      proxy_pass http://backends;"
  echo "      proxy_http_version 1.1;"
  echo "      proxy_set_header Connection \"\";"
  echo "      proxy_set_header Host \$host;"
  echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
  echo "    }"
  echo "  }"
  echo "}"
} >"$TMP/nginx.conf"

# HAProxy under test: 1 thread, connection reuse, no logging, round robin.
{
  cat <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 300s
  option forwardfor
  http-reuse always
frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend backends
backend backends
  balance roundrobin
EOF
  i=0
  for p in "${BACKEND_PORTS[@]}"; do echo "  server b$i 127.0.0.1:$p"; i=$((i + 1)); done
} >"$TMP/haproxy.cfg"

# sluice under test: one pool, default round robin, over the same backends.
{
  echo "pools:"
  echo "  - name: bench"
  echo "    hosts: [\"*\"]"
  echo "    pathPrefix: /"
  echo "    endpoints:"
  for p in "${BACKEND_PORTS[@]}"; do echo "      - {address: 127.0.0.1:$p}"; done
} >"$TMP/sluice.yaml"

# Idle sluice: 100 pools x 10 endpoints, distinct hosts, never dialled.
{
  echo "pools:"
  for ((i = 0; i < IDLE_POOLS; i++)); do
    echo "  - name: pool-$i"
    echo "    hosts: [\"pool-$i.bench.example\"]"
    echo "    pathPrefix: /"
    echo "    endpoints:"
    for ((j = 1; j <= IDLE_ENDPOINTS; j++)); do echo "      - {address: 127.0.$i.$j:8080}"; done
  done
} >"$TMP/idle.yaml"

# --- header ------------------------------------------------------------------

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then COMMIT="$COMMIT (with local changes)"; fi
{
  echo "# Sluice load benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(uname -srm); ${CPU_MODEL:-unknown CPU}; nproc $NPROC; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- sluice $COMMIT; $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v 2>&1 | head -1 | sed 's/ - https.*//'); $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "- scenarios ${SCENARIOS[*]}: $ROUNDS round(s) of $DURATION s each, order rotated each round, after a $WARMUP s warm-up run of each; wrk -t1 -c$CONNECTIONS"
  echo "- $BACKENDS backend ports on one nginx worker, body ${#BODY} bytes; $PINNING"
} >"$TMP/header.md"
cat "$TMP/header.md" >&2

# --- idle RSS ----------------------------------------------------------------

log "sluice idle RSS with $IDLE_POOLS pools x $IDLE_ENDPOINTS endpoints"
start sluice-idle env RUST_LOG=warn "${ON_PROXY_CORE[@]}" "$SLUICE" --config "$TMP/idle.yaml" \
  --http 127.0.0.1:0 --admin "127.0.0.1:$IDLE_ADMIN" --workers 1 --grace-period 1s
IDLE_PID=$LAST_PID
ready sluice-idle "$IDLE_PID" "http://127.0.0.1:$IDLE_ADMIN/readyz" ""
sleep 2
IDLE_RSS=$(measure rss "$IDLE_PID")
IDLE_HWM=$(measure hwm "$IDLE_PID")
stop "$IDLE_PID"
log "idle RSS $((IDLE_RSS / 1024)) MiB (VmRSS $IDLE_RSS KiB, VmHWM $IDLE_HWM KiB)"

# --- the load runs -----------------------------------------------------------

log "starting backends, nginx, HAProxy and sluice"
start backend "${ON_LOAD_CORE[@]}" nginx -p "$TMP/backend" -c "$TMP/backend.conf" -e "$TMP/backend/error.log"
BACKEND_PID=$LAST_PID
start nginx "${ON_PROXY_CORE[@]}" nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log"
NGINX_PID=$LAST_PID
start haproxy "${ON_PROXY_CORE[@]}" haproxy -db -f "$TMP/haproxy.cfg"
HAPROXY_PID=$LAST_PID
start sluice env RUST_LOG=warn "${ON_PROXY_CORE[@]}" "$SLUICE" --config "$TMP/sluice.yaml" \
  --http "127.0.0.1:$SLUICE_PORT" --admin "127.0.0.1:$SLUICE_ADMIN" --workers 1 --grace-period 1s
SLUICE_PID=$LAST_PID

ready backend "$BACKEND_PID" "http://127.0.0.1:${BACKEND_PORTS[0]}/" "$BODY"
ready nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/" "$BODY"
ready haproxy "$HAPROXY_PID" "http://127.0.0.1:$HAPROXY_PORT/" "$BODY"
ready sluice "$SLUICE_PID" "http://127.0.0.1:$SLUICE_ADMIN/readyz" ""
ready sluice "$SLUICE_PID" "http://127.0.0.1:$SLUICE_PORT/" "$BODY"

declare -A PORT_OF=([direct]=${BACKEND_PORTS[0]} [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [sluice]=$SLUICE_PORT)
declare -A PID_OF=([direct]=- [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID [sluice]=$SLUICE_PID)
CLK=$(measure clk)

wrk_run() { # wrk_run PORT SECONDS OUTPUT
  "${ON_LOAD_CORE[@]}" wrk -t1 "-c$CONNECTIONS" "-d${2}s" --latency "http://127.0.0.1:$1/" >"$3" 2>&1 ||
    { cat "$3" >&2; die "wrk failed"; }
}

proxy_cpu() { if [[ $1 == - ]]; then echo -; else measure cpu "$1"; fi; }
proxy_hwm() { if [[ $1 == - ]]; then echo -; else measure hwm "$1"; fi; }
# core_ticks: "BUSY,TOTAL" jiffies of the proxy's core (of core 0 unpinned).
core_ticks() { measure core "$( ((NPROC >= 2)) && echo "$PROXY_CPU" || echo 0)" | tr ' ' ','; }

if ((WARMUP > 0)); then
  for sc in "${SCENARIOS[@]}"; do
    log "warm-up: $sc"
    wrk_run "${PORT_OF[$sc]}" "$WARMUP" "$TMP/warmup-$sc.txt"
  done
fi

: >"$TMP/samples.jsonl"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < ${#SCENARIOS[@]}; k++)); do
    sc=${SCENARIOS[(k + round - 1) % ${#SCENARIOS[@]}]}
    pid=${PID_OF[$sc]}
    if [[ $pid != - ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "$sc exited; its log:"
      sed 's/^/  /' "$TMP/$sc.log" >&2 || true
      exit 1
    fi
    out="$TMP/wrk-$sc-$round.txt"
    cpu0=$(proxy_cpu "$pid")
    core0=$(core_ticks)
    wrk_run "${PORT_OF[$sc]}" "$DURATION" "$out"
    core1=$(core_ticks)
    cpu1=$(proxy_cpu "$pid")
    hwm=$(proxy_hwm "$pid")
    python3 "$BENCH_DIR/report.py" sample "$sc" "$round" "$out" "$DURATION" "$CLK" \
      "$cpu0" "$cpu1" "$core0" "$core1" "$hwm" >>"$TMP/samples.jsonl"
  done
done

for sc in nginx haproxy sluice; do
  if [[ -s $TMP/$sc.log ]]; then
    log "$sc wrote to its log (first lines):"
    head -n 5 "$TMP/$sc.log" | sed 's/^/  /' >&2
  fi
done

# --- instructions per request (callgrind) -------------------------------------

# h2load_run PORT SECONDS OUTPUT: h2c with prior knowledge, CG_H2_CONNECTIONS
# connections with CG_H2_STREAMS streams in flight on each.
h2load_run() {
  "${ON_LOAD_CORE[@]}" h2load "-c$CG_H2_CONNECTIONS" "-m$CG_H2_STREAMS" "-D$2" "http://127.0.0.1:$1/" >"$3" 2>&1 ||
    { cat "$3" >&2; die "h2load failed"; }
}

# instructions NAME PORT H2C_PORT CMD...: runs CMD under callgrind, warms it
# up, then counts its user-space instructions over CG_SECONDS of HTTP/1.1 load
# (wrk), and again over CG_SECONDS of h2c load (h2load) on H2C_PORT; appends
# "NAME INSTRUCTIONS REQUESTS" and "NAME-h2c INSTRUCTIONS REQUESTS" to
# $TMP/instructions.txt.
instructions() {
  local name=$1 port=$2 h2port=$3
  shift 3
  start "cg-$name" env RUST_LOG=warn "${ON_PROXY_CORE[@]}" valgrind --tool=callgrind \
    --callgrind-out-file="$TMP/cg-$name.out" "$@"
  local pid=$LAST_PID
  ready "cg-$name" "$pid" "http://127.0.0.1:$port/" "$BODY"
  wrk_run "$port" 2 "$TMP/cg-warm-$name.txt"
  callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control could not reach $name"
  wrk_run "$port" "$CG_SECONDS" "$TMP/cg-wrk-$name.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control could not reach $name"
  h2load_run "$h2port" 2 "$TMP/cg-warm-h2-$name.txt"
  callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control could not reach $name"
  h2load_run "$h2port" "$CG_SECONDS" "$TMP/cg-h2load-$name.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control could not reach $name"
  stop "$pid"
  local requests ir h2_requests h2_failed h2_ir
  requests=$(awk '/requests in/ { print $1; exit }' "$TMP/cg-wrk-$name.txt")
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$TMP/cg-$name.out.1")
  [[ -n $requests && -n $ir ]] || die "no callgrind figures for $name"
  echo "$name $ir $requests" >>"$TMP/instructions.txt"
  log "$name under callgrind: $((ir / requests)) instructions per request ($requests requests)"
  # "requests: T total, S started, D done, OK succeeded, F failed, E errored, ..."
  read -r h2_requests h2_failed < <(awk '/^requests:/ { print $8, $10 + $12; exit }' "$TMP/cg-h2load-$name.txt")
  h2_ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$TMP/cg-$name.out.2")
  [[ -n $h2_requests && -n $h2_ir ]] && ((h2_requests > 0)) || die "no h2c callgrind figures for $name"
  ((h2_failed == 0)) || die "h2load: $h2_failed h2c requests through $name failed"
  echo "$name-h2c $h2_ir $h2_requests" >>"$TMP/instructions.txt"
  log "$name under callgrind, h2c: $((h2_ir / h2_requests)) instructions per request ($h2_requests requests)"
}

if [[ $INSTRUCTIONS != 0 ]]; then
  : >"$TMP/instructions.txt"
  # nginx without its master process, so that valgrind follows the worker.
  # The same configurations with an h2c listener each (nginx and HAProxy
  # on a second port; sluice serves h2c on its HTTP port).
  sed -e "s/listen 127.0.0.1:$NGINX_PORT;/listen 127.0.0.1:$CG_NGINX_PORT;\\n    listen 127.0.0.1:$CG_NGINX_H2 http2;/" \
    -e 's/^master_process on;/master_process off;/' "$TMP/nginx.conf" >"$TMP/cg-nginx.conf"
  mkdir -p "$TMP/cg-nginx"
  sed "s/bind 127.0.0.1:$HAPROXY_PORT/bind 127.0.0.1:$CG_HAPROXY_PORT\\n  bind 127.0.0.1:$CG_HAPROXY_H2 proto h2/" \
    "$TMP/haproxy.cfg" >"$TMP/cg-haproxy.cfg"
  instructions nginx "$CG_NGINX_PORT" "$CG_NGINX_H2" nginx -p "$TMP/cg-nginx" -c "$TMP/cg-nginx.conf" -e "$TMP/cg-nginx/error.log"
  instructions haproxy "$CG_HAPROXY_PORT" "$CG_HAPROXY_H2" haproxy -db -f "$TMP/cg-haproxy.cfg"
  instructions sluice "$CG_SLUICE_PORT" "$CG_SLUICE_PORT" "$SLUICE" --config "$TMP/sluice.yaml" \
    --http "127.0.0.1:$CG_SLUICE_PORT" --https off --admin 127.0.0.1:0 --workers 1 --grace-period 1s
fi

mkdir -p "$BENCH_DIR/results"
python3 "$BENCH_DIR/report.py" summary "$TMP/samples.jsonl" "$TMP/header.md" "$IDLE_RSS" "$IDLE_HWM" \
  "$( ((NPROC >= 2)) && echo 1 || echo 0)" >"$TMP/report.md"
if [[ -s $TMP/instructions.txt ]]; then
  python3 "$BENCH_DIR/report.py" instructions "$TMP/instructions.txt" >>"$TMP/report.md"
fi
cp "$TMP/report.md" "$BENCH_DIR/results/latest.md"
echo
cat "$TMP/report.md"
log "written to bench/results/latest.md"
