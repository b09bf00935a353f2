#!/usr/bin/env bash
# Fuzz the FHIR XML reader for a bounded time: scripts/fuzz.sh [SECONDS] (default 30).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain use them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
# new inputs go to the temporary corpus; the committed seeds are only read
if ! RUSTC_BOOTSTRAP=1 cargo fuzz run xml_reader --fuzz-dir fuzz "$corpus" fuzz/corpus/xml_reader \
  -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$corpus.log" 2>&1; then
  tail -n 80 "$corpus.log"
  echo "fuzz: xml_reader FAILED (the crashing input is under fuzz/artifacts/)" >&2
  exit 1
fi
grep -E "^Done [0-9]+ runs" "$corpus.log" || true
rm -f "$corpus.log"
echo "fuzz: xml_reader ran ${seconds}s without a crash"
