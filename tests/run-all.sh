#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this). As root on Debian 12:
#   1. brings up the test environment (tests/env/up.sh: Incus, the test image, a private bus);
#   2. validates the tree (cargo xtask validate: rustfmt, clippy -D warnings, scripts, data files);
#   3. runs each fuzz target for a bounded time (fuzz/run.sh; KAPSULE_FUZZ_SECONDS, default 30);
#   4. builds every test target, the static programs placed in containers, the release binaries
#      the sysext tests pack and the Qt client of
#      tests/qt-client (so no test spends its time limit compiling, nor starves the others of the
#      two cores while it does);
#   5. runs every test tier with cargo-nextest and prints its summary;
#   6. tears the environment down again (unless KAPSULE_KEEP_ENV=1), leaving no process behind.
# Tiers and what each needs: docs/TESTING.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ "$(id -u)" -eq 0 ] || { echo "tests/run-all.sh: run as root (the real-Incus tier needs it)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "tests/run-all.sh: cargo not found; a Rust toolchain >= 1.89 is required" >&2; exit 1; }

if [ "${KAPSULE_KEEP_ENV:-0}" != 1 ]; then
    trap 'bash tests/env/down.sh' EXIT
fi
bash tests/env/up.sh
# shellcheck disable=SC1091
source /run/kapsule-test/env

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "[run-all] installing cargo-nextest from crates.io" >&2
    cargo install --locked cargo-nextest
fi

cargo xtask validate
# Before the tests, so the test runner's summary is what the run ends with.
bash fuzz/run.sh "${KAPSULE_FUZZ_SECONDS:-30}"
cargo nextest run --workspace --all-targets --profile ci --no-run
cargo xtask static >/dev/null
cargo xtask sysext target/sysext
bash tests/qt-client/build.sh >/dev/null
# Every tier at once: tier 0 (pure logic, fixtures), tier 1 (unit tests that need root, ignored by
# a plain `cargo test`, named tier1_*) and tier 2 (real incusd) share the run, so the summary line
# counts them all.
cargo nextest run --workspace --all-targets --profile ci --run-ignored all
