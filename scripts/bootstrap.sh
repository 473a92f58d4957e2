#!/usr/bin/env bash
# Install what Pushgate needs on Debian 12, idempotently: Kamailio 5.6 modules,
# PostgreSQL 15, SIPp, a Python virtualenv (.venv) for pushd and the tests, and the
# Debian 13 root with Kamailio 6.0 the tests also run on (.cache/trixie, built once by
# scripts/kamailio-root.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  kamailio kamailio-python3-modules kamailio-postgres-modules kamailio-outbound-modules
  kamailio-extra-modules kamailio-utils-modules kamailio-tls-modules kamailio-websocket-modules
  postgresql-15 postgresql-client-15 sip-tester socat python3-venv python3-pip linphone-cli
  patch
  # The browser softphone test (tests/e2e/test_browser.py): Chromium driven by Selenium,
  # JsSIP from npm, bundled by esbuild (testkit/browser/).
  chromium chromium-driver
)
# Debian's npm, unless a Node.js with its own npm is installed already.
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Debian's postgresql package would start a cluster on 5432; we never use it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: creating .venv"
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# JsSIP for the browser test page, exactly as package-lock.json pins it, bundled once.
browser=testkit/browser
bstamp=$browser/node_modules/.installed-$(sha1sum $browser/package-lock.json | cut -c1-12)
if [ ! -f "$bstamp" ] || [ ! -f $browser/build/jssip.js ]; then
  echo "bootstrap: npm ci in $browser"
  (cd $browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run -s build)
  touch "$bstamp"
fi

# Kamailio 6.0 (Debian 13) for the tests: built once (about a minute), then a stamp check.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO bash scripts/kamailio-root.sh >/dev/null
