#!/usr/bin/env bash
# ROR full sync at scale: starts bench/ror-standin.py serving ROR_UNITS generated offers with
# their organisations and places, then runs `passerelle ror sync --full` (release build)
# twice — the first run creates everything, the second finds nothing changed — and prints
# wall time and peak RSS (/usr/bin/time -v) of each. See BENCHMARKS.md, "ROR sync".
#
# Environment (all optional):
#   ROR_UNITS=100000        offers served (each with 1 OI, 1/2 EG, 1/4 EJ, 1 Location)
#   ROR_ROUTE=export        export ($export, ndjson streamed) or paging (searches, _count=200)
#   ROR_RUNS="first unchanged"  which runs (the second finds nothing changed)
#   ROR_ENGINE=sqlite       sqlite, or postgres (a fresh database on BENCH_PGHOST:5432)
#   BENCH_SKIP_BUILD=1      use target/release/passerelle as it is
#   CARGO_TARGET_DIR        where the release build goes (default target/)
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
UNITS=${ROR_UNITS:-100000}
ROUTE=${ROR_ROUTE:-export}
ENGINE=${ROR_ENGINE:-sqlite}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  (cd "$REPO" && cargo build --release --locked --quiet)
fi
BIN=$TARGET/release/passerelle
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$BENCH_DIR/ror-standin.py" --port "$PORT" --units "$UNITS" 2>"$WORK/standin.log" &
STANDIN=$!
PGDB=""
cleanup() {
  kill "$STANDIN" 2>/dev/null || true
  if [ -n "$PGDB" ]; then psql -h "${BENCH_PGHOST:-127.0.0.1}" -U postgres -qc "DROP DATABASE IF EXISTS $PGDB" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2).close()" 2>/dev/null && break
  sleep 0.1
done
if [ "$ENGINE" = postgres ]; then
  PGDB=passerelle_ror_bench_$$
  psql -h "${BENCH_PGHOST:-127.0.0.1}" -U postgres -qc "CREATE DATABASE $PGDB" >/dev/null
  export DATABASE_URL="postgres://postgres@${BENCH_PGHOST:-127.0.0.1}:5432/$PGDB"
else
  export DATABASE_URL="sqlite://$WORK/directory.db"
fi
export PASSERELLE_ROR__BASE_URL="http://127.0.0.1:$PORT/fhir"
export PASSERELLE_ROR__TOKEN_URL="http://127.0.0.1:$PORT/token"
export PASSERELLE_ROR__CLIENT_ID=bench PASSERELLE_ROR__CLIENT_SECRET=bench
export PASSERELLE_ROR__USER_PROFILE_CODE=CU20 PASSERELLE_ROR__BUSINESS_ROLE_CODE=AUTOMATE
export PASSERELLE_ROR__USE_EXPORT=$([ "$ROUTE" = export ] && echo true || echo false)
export PASSERELLE_ROR__EXPORT_POLL_MS=100 PASSERELLE_LOG=warn
unset PASSERELLE_CONFIG
echo "ROR sync bench: $UNITS units, route $ROUTE, $ENGINE, $(nproc) cores, $(date -u +%F)"
for run in ${ROR_RUNS:-first unchanged}; do
  /usr/bin/time -v "$BIN" ror sync --full 2>"$WORK/$run.log" || { cat "$WORK/$run.log"; exit 1; }
  wall=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$WORK/$run.log")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/$run.log")
  summary=$(grep -o 'full sync: .*' "$WORK/$run.log" | tail -1)
  echo "| $UNITS | $ROUTE | $ENGINE | $run | $wall | $((rss / 1024)) MiB | $summary |"
done
