#!/usr/bin/env bash
# Every test, Rust and Python: the test command README.md gives (and CI runs).
# Needs the system packages .ci/run installs; installs the Python package it tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked --features hitchserve/tokio

# The Python package, built by pip with maturin (its PEP 517 backend), with what its tests use.
python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --root-user-action=ignore \
    pytest pytest-xdist psutil ./crates/hitchserve-py
# The SMTP mock the Python tests start is the package's own (its `hitchsmtp` command).
python3 -m pytest crates/hitchserve-py/tests -n 2 -p no:cacheprovider
