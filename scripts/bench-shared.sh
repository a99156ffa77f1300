#!/usr/bin/env bash
# Issue 16's figures: 20 tests that each need PostgreSQL and an app service, run under nextest
# (a process per test), with a bundle per test and with one shared bundle: the wall time of
# each run and how many times PostgreSQL was started. Needs what .ci/run installs, and
# cargo-nextest. Prints one line per mode.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p hitchserve-cli
cargo nextest run --release -p hitchserve-cli --test pg_suite --run-ignored only >/dev/null 2>&1 || true

for mode in per-test shared; do
    dir=$(mktemp -d /tmp/hitchserve-pg-suite-XXXXXX)
    chmod 711 "$dir"   # PostgreSQL runs as `postgres` when we are root: it must reach its run directory
    cat > "$dir/hitchserve.toml" <<'TOML'
[bundle]
startup_timeout = "120s"

[services.Postgres]
kind = "postgres"
users = [{ name = "app", password = "secret" }]
databases = [{ name = "app", owner = "app" }]

[services.App]
command = ["sh", "-c", "echo READY; exec sleep 1000"]
ready = { line_contains = "READY" }
needs = ["Postgres"]
TOML
    start=$(date +%s.%N)
    HITCHSERVE_PG_SUITE=$mode HITCHSERVE_PG_SUITE_DIR=$dir \
        cargo nextest run --release -p hitchserve-cli --test pg_suite --run-ignored only \
        --no-fail-fast --status-level fail --final-status-level none >"$dir/nextest.log" 2>&1 \
        || { cat "$dir/nextest.log"; exit 1; }
    end=$(date +%s.%N)
    target/release/hitchserve -f "$dir/hitchserve.toml" down >/dev/null 2>&1 || true
    starts=$(grep -l "database system is ready to accept connections" "$dir"/.hitchserve/runs/*/logs/all.log | wc -l)
    passed=$(grep -oE "[0-9]+ passed" "$dir/nextest.log" | tail -1)
    printf '%-9s wall %6.2f s   PostgreSQL starts: %2d   (%s)\n' "$mode" "$(awk "BEGIN{print $end - $start}")" "$starts" "$passed"
    rm -rf "$dir"
done
