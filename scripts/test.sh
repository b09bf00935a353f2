#!/usr/bin/env bash
# The whole test suite: unit and integration tests on SQLite and PostgreSQL.
# PostgreSQL: TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test); set
# TEST_DATABASE_URL= (empty) to skip that suite knowingly.
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL-postgres://postgres@127.0.0.1:5432/test}"
if [ -n "$TEST_DATABASE_URL" ]; then
  if ! python3 - "$TEST_DATABASE_URL" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=5).close()
PY
  then
    echo "test.sh: PostgreSQL at $TEST_DATABASE_URL is unreachable; start it or set TEST_DATABASE_URL= to skip" >&2
    exit 1
  fi
fi

# A real third-party FHIR client (Python fhirpy) for tests/process.rs.
if ! target/pyenv/bin/python -c "import fhirpy" 2>/dev/null; then
  mkdir -p target
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install --quiet --disable-pip-version-check fhirpy==2.3.1
fi

# LibreOffice reads the XLSX exports back (tests/workflow.rs); the tests require it here.
if ! command -v libreoffice >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "test.sh: installing libreoffice-calc-nogui (about 30 s)" >&2
  install_lo() {
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends \
      libreoffice-calc-nogui >/dev/null
  }
  install_lo || { $sudo_cmd apt-get update -q >/dev/null && install_lo; }
fi
export TEST_REQUIRE_LIBREOFFICE=1

# A real OpenID Connect provider configured like Pro Santé Connect (tests/psc.rs): the npm
# package oidc-provider, pinned by tests/oidc/package-lock.json; nothing is fetched once
# installed. The PSC tests fail without it here (they only skip, with a note, elsewhere).
if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  echo "test.sh: installing tests/oidc (oidc-provider, about 15 s)" >&2
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi
export TEST_REQUIRE_OIDC=1
# tests/psc.rs makes its test CA and certificates with the openssl command
if ! command -v openssl >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q openssl >/dev/null \
    || { $sudo_cmd apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q openssl >/dev/null; }
fi

# The XML reader under a fuzzer for a bounded time (FUZZ_SECONDS=0 skips it).
if [ "${FUZZ_SECONDS:-30}" -gt 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one summary per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
