#!/usr/bin/env bash
# Make sure the system programs some tests and features use are on this machine:
#   postgresql  - initdb/pg_ctl for the throwaway server of tests/recipe/test_postgres.py
#                 (a shared study for `cnnlab search --storage postgresql://...`)
#   chromium    - a headless browser for the HTML report tests
# Installs Debian's packages with apt-get (as root or through sudo) when they are missing.
# Never fails: without apt-get or the rights to use it, it prints how to install them.
set -u

have_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

missing=""
have_postgres || missing="$missing postgresql"
have_chromium || missing="$missing chromium"
if [ -z "$missing" ]; then
  echo "System dependencies present: postgresql, chromium."
  exit 0
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo="$(command -v sudo || true)"
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
  echo "Installing Debian packages:$missing (apt-get, quiet)..."
  # shellcheck disable=SC2086 # $missing is a list of package names
  if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 ||
     { $sudo apt-get update -q >/dev/null 2>&1 &&
       $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; }; then
    echo "Installed:$missing."
    exit 0
  fi
  echo "apt-get could not install:$missing."
fi
echo "Missing system packages:$missing. Install them with your package manager, e.g."
echo "  sudo apt-get install$missing        (Debian/Ubuntu)"
echo "  brew install postgresql chromium    (macOS)"
echo "The tests that need them are skipped until then (CI sets CNNLAB_REQUIRE_SYSTEM_TESTS=1 to fail instead)."
exit 0
