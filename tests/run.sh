#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, Rust unit and integration tests, the
# end-to-end test with a Python client, the browser demo test in headless Chromium, and a
# short smoke run of every fuzz target.
#
# It installs what it needs on first use: Python packages into tests/.venv, npm packages into
# tests/browser/node_modules, Debian's chromium (needs root, or chromium already installed),
# and cargo-fuzz for the nightly toolchain. FUZZ_SECONDS sets the fuzz time per target
# (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets

echo "== release build"
cargo build --release --locked --bin framegate

echo "== python end-to-end"
venv=tests/.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
"$venv/bin/python" tests/e2e/relay_python.py target/release/framegate

echo "== browser end-to-end"
FRAMEGATE_BIN="$PWD/target/release/framegate" bash tests/browser/run.sh

echo "== fuzz smoke"
bash fuzz/run.sh "${FUZZ_SECONDS:-30}"

echo "all test stages passed"
