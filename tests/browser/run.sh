#!/usr/bin/env bash
# Runs the headless-Chromium test of the demo page against a real framegate server.
#
# Installs what is missing: Debian's chromium (and nodejs/npm) with apt, playwright-core with
# `npm ci`. Builds the release binary unless FRAMEGATE_BIN names one. Exits non-zero when an
# install, the build or a test fails.
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $* missing and this script is not root; install it with apt-get" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if [ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]; then
    echo "== installing chromium"
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "== installing nodejs and npm"
    apt_install nodejs npm
fi

echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error

if [ -z "${FRAMEGATE_BIN:-}" ]; then
    echo "== cargo build --release"
    (cd ../.. && cargo build --release --locked --bin framegate)
fi

echo "== node --test"
node --test demo.test.mjs
