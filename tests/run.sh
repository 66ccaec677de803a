#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, Rust unit and integration tests, and the
# end-to-end test with a Python client (installed into tests/.venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets

echo "== cargo test --release (integration)"
cargo build --release --locked --bin framegate

echo "== python end-to-end"
venv=tests/.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
"$venv/bin/python" tests/e2e/relay_python.py target/release/framegate
