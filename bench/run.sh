#!/usr/bin/env bash
# Passerelle benchmark: builds the server in release, measures create / read / search /
# transaction / update at concurrency 1 and 16 on SQLite and PostgreSQL, next to floors measured in the
# same run (an axum handler serving the Task from memory; the raw durable commit rate of each
# database) and, when it has been built (bench/build-helios.sh), the Helios FHIR server.
# Everything runs on loopback. The Markdown report goes to stdout and bench/out/.
# See BENCHMARKS.md for what each scenario is.
#
# Environment (all optional):
#   BENCH_SECONDS=10          length of each measured wrk run (a 1 s checked warm-up precedes it)
#   BENCH_ENGINES="sqlite postgres"
#   BENCH_TASKS=10000         Tasks seeded before the runs, over BENCH_OWNERS=50 units
#   BENCH_PGHOST=127.0.0.1 BENCH_PGPORT=5432 BENCH_PGUSER=postgres
#                             PostgreSQL server where a fresh database is created then dropped
#   CARGO_TARGET_DIR          where the server is built (default: target/ of the repository)
#   BENCH_SKIP_BUILD=1        use the binary already in CARGO_TARGET_DIR/release (no cargo build)
#   BENCH_FLOOR_TARGET_DIR    where bench/floor is built (default: bench/floor/target)
#   HELIOS_CACHE              Helios install (default: $HOME/.cache/passerelle-bench/helios)
#   BENCH_HELIOS=auto         auto: run Helios when HELIOS_CACHE/bin/hfs exists; 0: never
#   BENCH_OUT_DIR             report folder (default: bench/out)
#   BENCH_PG_ANALYZE=1        run ANALYZE on the PostgreSQL database after seeding (0: don't)
#   BENCH_FORMATS=0           skip the in-process JSON/XML parse and write comparison
#   BENCH_KEEP=1              keep the work folder (databases, server logs) for inspection
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
SECS=${BENCH_SECONDS:-10}
ENGINES=${BENCH_ENGINES:-sqlite postgres}
TASKS=${BENCH_TASKS:-10000}
OWNERS=${BENCH_OWNERS:-50}
PG_HOST=${BENCH_PGHOST:-127.0.0.1}
PG_PORT=${BENCH_PGPORT:-5432}
PG_USER=${BENCH_PGUSER:-postgres}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
FLOOR_TARGET_DIR=${BENCH_FLOOR_TARGET_DIR:-$BENCH_DIR/floor/target}
HELIOS_CACHE=${HELIOS_CACHE:-$HOME/.cache/passerelle-bench/helios}
HELIOS_MODE=${BENCH_HELIOS:-auto}
OUT_DIR=${BENCH_OUT_DIR:-$BENCH_DIR/out}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-60}
SEED_TIMEOUT=${BENCH_SEED_TIMEOUT:-900}
CONCURRENCY="1 16"
SCENARIOS="read search create transaction update" # run order: reads before writes grow the table, updates last (they move Tasks)
TOKEN="" # Passerelle's runs: a gateway token of the bench's system client (Helios takes none)

case "$SECS" in '' | *[!0-9]*) echo "BENCH_SECONDS must be a whole number of seconds" >&2; exit 2 ;; esac
[ "$SECS" -ge 1 ] || { echo "BENCH_SECONDS must be at least 1" >&2; exit 2; }
[ "$OWNERS" -ge 3 ] || { echo "BENCH_OWNERS must be at least 3" >&2; exit 2; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
tool() { python3 "$BENCH_DIR/tool.py" "$@"; }

# --------------------------------------------------------------------------------------------
# clean-up: every server started here is stopped, the PostgreSQL database dropped

WORK=$(mktemp -d "${TMPDIR:-/tmp}/passerelle-bench.XXXXXX")
PIDS=()
PG_DB=""
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "$PG_DB" ]; then
    timeout 30 dropdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" --if-exists "$PG_DB" >/dev/null 2>&1 ||
      log "warning: could not drop database $PG_DB"
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() { # SIGTERM, then SIGKILL after 10 s
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

stop_server() { # stop_server PID: stop it and forget it
  local pid=$1 keep=() p
  stop_pid "$pid"
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

# start_server DIR LOG CMD...: runs CMD in DIR, in the background, with a clean environment
# (only PATH, HOME and what CMD sets); sets SERVER_PID
start_server() {
  local dir=$1 logfile=$2
  shift 2
  (cd "$dir" && exec env -i PATH="$PATH" HOME="$HOME" NO_COLOR=1 "$@") >"$logfile" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}

# --------------------------------------------------------------------------------------------
# tools

want_pg() { [[ " $ENGINES " == *" postgres "* ]]; }

install_tools() {
  command -v python3 >/dev/null || die "python3 is needed"
  command -v cargo >/dev/null || die "cargo is needed (rustup)"
  local pkgs=()
  command -v wrk >/dev/null || pkgs+=(wrk)
  if want_pg; then
    command -v pgbench >/dev/null && pgbench --version >/dev/null 2>&1 || pkgs+=(postgresql-contrib)
    command -v createdb >/dev/null || pkgs+=(postgresql-client)
  fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    log "installing ${pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y "${pkgs[@]}" >"$WORK/apt.log" 2>&1 ||
      { $sudo apt-get update >>"$WORK/apt.log" 2>&1 && $sudo apt-get install -y "${pkgs[@]}" >>"$WORK/apt.log" 2>&1; } ||
      { tail -20 "$WORK/apt.log" >&2; die "could not install ${pkgs[*]}"; }
  fi
}

build() {
  BIN="$TARGET_DIR/release/passerelle"
  if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
    [ -x "$BIN" ] || die "BENCH_SKIP_BUILD=1 but there is no $BIN"
    log "using the existing $BIN (BENCH_SKIP_BUILD=1)"
  else
    log "building Passerelle (release, CARGO_TARGET_DIR=$TARGET_DIR)"
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked) >"$WORK/build.log" 2>&1 ||
      { tail -30 "$WORK/build.log" >&2; die "the release build failed"; }
  fi
  log "building the HTTP floor (bench/floor, CARGO_TARGET_DIR=$FLOOR_TARGET_DIR)"
  (cd "$BENCH_DIR/floor" && CARGO_TARGET_DIR="$FLOOR_TARGET_DIR" cargo build --release --locked) >"$WORK/floor-build.log" 2>&1 ||
    { tail -30 "$WORK/floor-build.log" >&2; die "the floor build failed"; }
  FLOOR_BIN="$FLOOR_TARGET_DIR/release/passerelle-bench-floor"
}

# --------------------------------------------------------------------------------------------
# measuring

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
RUN=0

# wrk_run ENGINE SCENARIO C URL PREFIX SECONDS CHECK: one wrk run, recorded in results.jsonl
wrk_run() {
  local engine=$1 scen=$2 c=$3 url=$4 prefix=$5 secs=$6 check=$7
  local threads=1 kind=wrk
  [ "$c" -gt 1 ] && threads=2
  [ "$check" = 1 ] && kind=check
  RUN=$((RUN + 1))
  local stem="$WORK/wrk-$RUN-$engine-$scen-c$c"
  rm -f "$stem.result" "$stem.bad"
  env BENCH_LUA_DIR="$BENCH_DIR/lua" BENCH_PREFIX="$prefix" BENCH_RUN="$RUN" BENCH_CHECK="$check" \
    BENCH_TOKEN="$TOKEN" \
    BENCH_CHECK_FILE="$stem.bad" BENCH_RESULT="$stem.result" BENCH_OWNERS="$OWNERS" \
    BENCH_TASK_FILE="$WORK/task.json" BENCH_TRANSACTION_FILE="$WORK/transaction.json" \
    BENCH_IDS_FILE="$WORK/ids-$engine.txt" \
    timeout $((secs + 60)) wrk -t"$threads" -c"$c" -d"${secs}s" --timeout 10s \
    -s "$BENCH_DIR/lua/$scen.lua" "$url" >"$stem.log" 2>&1 ||
    log "warning: wrk $engine $scen c=$c exited with an error (see $stem.log)"
  tool record "$kind" "$stem.result" engine="$engine" scenario="$scen" c="$c" file:first="$stem.bad" >>"$RESULTS"
  if [ "$check" = 1 ] && [ -s "$stem.bad" ]; then
    log "warning: $engine $scen answered non-2xx: $(head -c 300 "$stem.bad" | tr '\n' ' ')"
  fi
}

# scenarios ENGINE BASE_URL PREFIX: the five scenarios, each warmed up and checked, then c=1, c=16
scenarios() {
  local engine=$1 url=$2 prefix=$3 scen c
  for scen in $SCENARIOS; do
    log "$engine: $scen"
    wrk_run "$engine" "$scen" 1 "$url" "$prefix" 1 1
    for c in $CONCURRENCY; do
      wrk_run "$engine" "$scen" "$c" "$url" "$prefix" "$SECS" 0
    done
  done
}

# seed ENGINE FHIR_BASE [--lenient]
seed() {
  local engine=$1 base=$2 lenient=${3:-}
  BENCH_TOKEN="$TOKEN" tool setup "$base" $lenient || die "$engine: could not create the resources the Tasks point at"
  log "$engine: seeding $TASKS Tasks"
  BENCH_TOKEN="$TOKEN" tool seed "$base" "$WORK/task.json" "$TASKS" "$OWNERS" "$WORK/ids-$engine.txt" --timeout "$SEED_TIMEOUT" \
    >"$WORK/seed-$engine.json" || die "$engine: seeding failed"
  tool record seed "$WORK/seed-$engine.json" engine="$engine" >>"$RESULTS"
}

# run_passerelle ENGINE
run_passerelle() {
  local engine=$1 port url start ready_s dburl
  port=$(tool free-port)
  url="http://127.0.0.1:$port"
  if [ "$engine" = sqlite ]; then
    dburl="sqlite://$WORK/passerelle-sqlite.db"
  else
    dburl="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
  fi
  # The load comes from a registered system client (an establishment's information system),
  # with every scope and no structure: its token is checked, and every access to patient
  # data audited, as in production. The token is minted with `passerelle admin token`.
  cat >"$WORK/passerelle-$engine.toml" <<TOML
[auth]
signing_key_file = "$WORK/signing-key-$engine.pem"
token_lifetime_seconds = 86400

[[auth.clients]]
client_id = "bench"
jwks_file = "$REPO/tests/data/psc/test-client-es384.jwks.json"
scopes = ["system/*.cruds"]
TOML
  log "$engine: starting Passerelle on $url"
  start=$(date +%s.%N)
  start_server "$WORK" "$WORK/server-$engine.log" PASSERELLE_LISTEN="127.0.0.1:$port" DATABASE_URL="$dburl" \
    PASSERELLE_LOG=warn "$BIN" --config "$WORK/passerelle-$engine.toml" serve
  local pid=$SERVER_PID
  tool wait-http "$url/ready" "$READY_TIMEOUT" "$pid" ||
    { tail -20 "$WORK/server-$engine.log" >&2; die "$engine: Passerelle not ready after ${READY_TIMEOUT} s"; }
  TOKEN=$(env -i PATH="$PATH" DATABASE_URL="$dburl" PASSERELLE_LISTEN="127.0.0.1:$port" "$BIN" --config "$WORK/passerelle-$engine.toml" \
    admin token --client bench) || die "$engine: passerelle admin token failed"
  ready_s=$(python3 -c "import time; print(round(time.time() - $start, 3))")
  tool mem "$pid" >"$WORK/mem-idle-$engine.json"
  seed "$engine" "$url/fhir"
  if [ "$engine" = postgres ] && [ "${BENCH_PG_ANALYZE:-1}" = 1 ]; then
    # Statistics as autovacuum would have them a minute after the load: without them the
    # planner sees the freshly filled index tables as empty.
    timeout 120 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -Atqc "ANALYZE" ||
      log "warning: ANALYZE failed"
  fi
  scenarios "$engine" "$url" /fhir
  tool mem "$pid" >"$WORK/mem-peak-$engine.json"
  local db_bytes=0
  if [ "$engine" = sqlite ]; then
    # the database and its audit trail's file (passerelle-sqlite-audit.db), WAL files included
    db_bytes=$(cat "$WORK"/passerelle-sqlite.db* "$WORK"/passerelle-sqlite-audit.db* 2>/dev/null | wc -c)
  else
    db_bytes=$(timeout 30 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -Atc \
      "select pg_database_size(current_database())" 2>/dev/null || echo 0)
  fi
  python3 - "$WORK/mem-idle-$engine.json" "$WORK/mem-peak-$engine.json" "$engine" "$ready_s" "$db_bytes" >>"$RESULTS" <<'PY'
import json, sys
idle, peak = (json.load(open(p)) for p in sys.argv[1:3])
print(json.dumps({"kind": "mem", "engine": sys.argv[3], "idle_kb": idle["rss_kb"], "peak_kb": peak["hwm_kb"],
                  "end_rss_kb": peak["rss_kb"], "end_anon_kb": peak["anon_kb"], "ready_s": float(sys.argv[4]), "db_bytes": int(sys.argv[5] or 0)}))
PY
  local warned
  warned=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/server-$engine.log" | grep -E '(^|[^A-Za-z])(ERROR|WARN)([^A-Za-z]|$)' |
    grep -v 'dev auth mode' | head -3 || true)
  if [ -n "$warned" ]; then
    log "$engine: the server logged warnings or errors: $warned"
    tool record problem engine="$engine" message="server log: $(head -1 <<<"$warned" | cut -c1-300)" >>"$RESULTS"
  fi
  stop_server "$pid"
}

run_helios() {
  local hfs="$HELIOS_CACHE/bin/hfs" port url start ready_s
  TOKEN="" # hfs runs without authentication
  mkdir -p "$WORK/helios"
  port=$(tool free-port)
  url="http://127.0.0.1:$port"
  log "helios: starting hfs on $url"
  start=$(date +%s.%N)
  start_server "$WORK/helios" "$WORK/server-helios.log" HFS_UI_ENABLED=false "$hfs" --host 127.0.0.1 \
    --port "$port" --database-url "$WORK/helios/fhir.db" --data-dir "$HELIOS_CACHE/data" --log-level warn \
    --base-url "$url"
  local pid=$SERVER_PID
  tool wait-http "$url/metadata" 180 "$pid" ||
    { tail -20 "$WORK/server-helios.log" >&2; log "helios: not ready after 180 s, skipped"; stop_server "$pid"; return 0; }
  ready_s=$(python3 -c "import time; print(round(time.time() - $start, 3))")
  tool mem "$pid" >"$WORK/mem-idle-helios.json"
  seed helios "$url" --lenient
  scenarios helios "$url" ""
  tool mem "$pid" >"$WORK/mem-peak-helios.json"
  local db_bytes
  db_bytes=$(cat "$WORK"/helios/fhir.db* 2>/dev/null | wc -c)
  python3 - "$WORK/mem-idle-helios.json" "$WORK/mem-peak-helios.json" "$ready_s" "$db_bytes" >>"$RESULTS" <<'PY'
import json, sys
idle, peak = (json.load(open(p)) for p in sys.argv[1:3])
print(json.dumps({"kind": "mem", "engine": "helios", "idle_kb": idle["rss_kb"], "peak_kb": peak["hwm_kb"],
                  "end_rss_kb": peak["rss_kb"], "end_anon_kb": peak["anon_kb"], "ready_s": float(sys.argv[3]), "db_bytes": int(sys.argv[4] or 0)}))
PY
  stop_server "$pid"
}

# --------------------------------------------------------------------------------------------
# floors

floor_http() {
  local port url c
  port=$(tool free-port)
  url="http://127.0.0.1:$port"
  start_server "$WORK" "$WORK/floor.log" "$FLOOR_BIN" "127.0.0.1:$port" "$WORK/task.json"
  local pid=$SERVER_PID
  tool wait-http "$url/" 20 "$pid" || { cat "$WORK/floor.log" >&2; die "the HTTP floor server did not start"; }
  log "floor: HTTP (axum, Task from memory)"
  wrk_run floor-http floor 1 "$url" "" 1 1
  for c in $CONCURRENCY; do
    wrk_run floor-http floor "$c" "$url" "" "$SECS" 0
  done
  # the wrk rows of the floor are recorded as floors
  python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[1], "w") as f:
    for r in rows:
        if r.get("engine") == "floor-http" and r.get("kind") == "wrk":
            r["kind"], r["name"] = "floor", "http"
        if r.get("engine") == "floor-http" and r.get("kind") == "check":
            r["kind"] = "floor-check"
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
PY
  stop_server "$pid"
}

floor_sqlite() {
  log "floor: SQLite commit (WAL, synchronous=FULL, one row per commit)"
  timeout $((SECS + 60)) python3 "$BENCH_DIR/tool.py" sqlite-floor "$WORK/floor-sqlite.db" "$WORK/task.json" "$SECS" \
    >"$WORK/floor-sqlite.json" || log "warning: the SQLite floor failed"
  tool record floor "$WORK/floor-sqlite.json" name=sqlite-commit c=1 >>"$RESULTS"
}

floor_pg() {
  local psql=(timeout 60 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -v ON_ERROR_STOP=1 -Atq)
  "${psql[@]}" -c "CREATE TABLE bench_floor (id bigserial PRIMARY KEY, body text NOT NULL)" ||
    { log "warning: cannot create the PostgreSQL floor table"; return 0; }
  # one INSERT of the Task per transaction (quotes doubled for the SQL literal)
  printf "INSERT INTO bench_floor (body) VALUES ('%s');\n" "$(sed "s/'/''/g" "$WORK/task.json")" >"$WORK/pg-insert.sql"
  local c threads
  for c in $CONCURRENCY; do
    threads=1
    [ "$c" -gt 1 ] && threads=2
    log "floor: PostgreSQL commit (pgbench -c$c, one row per transaction)"
    rm -f "$WORK"/pglog-c"$c".*
    timeout $((SECS + 60)) pgbench -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -n -c "$c" -j "$threads" -T "$SECS" \
      -f "$WORK/pg-insert.sql" -l --log-prefix="$WORK/pglog-c$c" "$PG_DB" >"$WORK/pgbench-c$c.log" 2>&1 ||
      { log "warning: pgbench -c$c failed: $(tail -3 "$WORK/pgbench-c$c.log")"; continue; }
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench-c$c.log" | head -1)
    tool pgbench-latency "$WORK/pglog-c$c" >"$WORK/pglat-c$c.json"
    tool record floor "$WORK/pglat-c$c.json" name=pg-commit c="$c" rps="${tps:-0}" >>"$RESULTS"
  done
  # the floor stored the Task as written (pgbench substitutes :names, the Task must not have any)
  local len
  len=$("${psql[@]}" -c "SELECT octet_length(body) FROM bench_floor LIMIT 1")
  [ "$len" = "$(wc -c <"$WORK/task.json")" ] || log "warning: the PostgreSQL floor stored $len bytes per row, not $(wc -c <"$WORK/task.json")"
  "${psql[@]}" -c "DROP TABLE bench_floor" || true
}

# --------------------------------------------------------------------------------------------
# main

install_tools
build
tool compact "$BENCH_DIR/data/task.json" "$WORK/task.json"
tool compact "$BENCH_DIR/data/transaction.json" "$WORK/transaction.json"

if want_pg; then
  if timeout 10 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    PG_DB="passerelle_bench_$$"
    timeout 30 createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB" || die "cannot create database $PG_DB"
    log "postgres: database $PG_DB created on $PG_HOST:$PG_PORT"
  else
    log "warning: PostgreSQL unreachable at $PG_USER@$PG_HOST:$PG_PORT, its runs are skipped"
    tool record problem engine=postgres message="PostgreSQL unreachable at $PG_USER@$PG_HOST:$PG_PORT: its runs were skipped" >>"$RESULTS"
    ENGINES=${ENGINES//postgres/}
  fi
fi

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
floor_http
[[ " $ENGINES " == *" sqlite "* ]] && floor_sqlite
[ -n "$PG_DB" ] && floor_pg

for engine in $ENGINES; do
  case "$engine" in
  sqlite | postgres) run_passerelle "$engine" ;;
  *) die "unknown engine $engine (sqlite, postgres)" ;;
  esac
done

HELIOS_NOTE="not built (bench/build-helios.sh)"
if [ "$HELIOS_MODE" != 0 ] && [ -x "$HELIOS_CACHE/bin/hfs" ]; then
  if [ -s "$HELIOS_CACHE/data/search-parameters-r4.json" ]; then
    HELIOS_NOTE="hfs 0.2.7 from $HELIOS_CACHE on SQLite (its base has no /fhir prefix)"
    run_helios
  else
    HELIOS_NOTE="built but its search parameters are missing ($HELIOS_CACHE/data/search-parameters-r4.json): run bench/build-helios.sh again"
  fi
elif [ "$HELIOS_MODE" = 0 ]; then
  HELIOS_NOTE="skipped (BENCH_HELIOS=0)"
fi
[ "$HELIOS_NOTE" = "not built (bench/build-helios.sh)" ] && echo "helios: not built (bench/build-helios.sh)" >&2

# report
PG_ANALYZED=0
[[ " $ENGINES " == *" postgres "* ]] && [ "${BENCH_PG_ANALYZE:-1}" = 1 ] && PG_ANALYZED=1
STAMP=$(date +%Y-%m-%d_%H%M%S)
DIRTY=0
[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | head -1)" ] && DIRTY=1
SMOKE=0
[ "$SECS" -lt 5 ] && SMOKE=1
tool record meta date="$(date '+%Y-%m-%d %H:%M %Z')" nproc="$(nproc)" \
  cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
  mem="$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)" \
  os="$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), Linux $(uname -r)" \
  load="$LOAD" commit="$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" dirty="$DIRTY" \
  binary="$BIN" binary_time="$(date -r "$BIN" '+%Y-%m-%d %H:%M %Z')" build="$([ "${BENCH_SKIP_BUILD:-0}" = 1 ] && echo existing || echo fresh)" wrk="$(wrk -v 2>&1 | head -1 | awk '{print $2}')" seconds="$SECS" smoke="$SMOKE" \
  tasks="$TASKS" owners="$OWNERS" engines="$ENGINES" concurrency="$CONCURRENCY" helios="$HELIOS_NOTE" \
  pg_analyze="$PG_ANALYZED" \
  >"$WORK/meta.json"
mkdir -p "$OUT_DIR"
tool report "$RESULTS" "$WORK/meta.json" >"$OUT_DIR/report-$STAMP.md"
# FHIR XML next to JSON: parse and write one admission Task and a 100-entry searchset
if [ "${BENCH_FORMATS:-1}" = 1 ]; then
  log "formats: JSON and XML parse/write (cargo run --release --example formats)"
  {
    echo
    echo "## FHIR JSON and XML, in process (examples/formats.rs)"
    echo
    echo "Operations per second on one core, same documents in both formats; the ratio columns are XML time ÷ JSON time."
    echo
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" FORMATS_MILLIS=$((SECS * 300)) \
      cargo run --quiet --release --locked --example formats -- "$BENCH_DIR/data/task.json")
  } >>"$OUT_DIR/report-$STAMP.md" || log "formats benchmark failed"
fi
cp "$RESULTS" "$OUT_DIR/results-$STAMP.jsonl"
cat "$OUT_DIR/report-$STAMP.md"
log "report: $OUT_DIR/report-$STAMP.md (raw figures: results-$STAMP.jsonl)"
