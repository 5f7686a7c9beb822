#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (tests/run-all.sh calls it; so can you):
#   bash fuzz/run.sh [seconds per target, default 30] [target...]
# Installs cargo-fuzz into .cache/tools/ on first use (from crates.io). Builds with
# `--sanitizer none`: the machine's one toolchain is stable, and these targets are safe Rust, where
# the sanitizers would find nothing libFuzzer's own crash and timeout detection does not.
# Each target starts from its seeds (fuzz/seeds/<target>/, written by seeds/make-seeds.py) and the
# corpus earlier runs grew (fuzz/corpus/<target>/, not committed). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run; replay it with
#   .cache/tools/bin/cargo-fuzz run --sanitizer none -O <target> <artifact>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd .. && pwd)
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(create_options image_ref nvidia_hook incus_answers)

cargo_fuzz=$root/.cache/tools/bin/cargo-fuzz
if [ ! -x "$cargo_fuzz" ]; then
    echo "[fuzz] installing cargo-fuzz into .cache/tools (from crates.io)" >&2
    cargo install --quiet --locked cargo-fuzz --root "$root/.cache/tools"
fi

echo "[fuzz] building the targets" >&2
"$cargo_fuzz" build --sanitizer none -O
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log=$(mktemp)
    if "$cargo_fuzz" run --sanitizer none -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        echo "[fuzz] $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1), corpus $(find "corpus/$target" -type f | wc -l) inputs" >&2
        rm -f "$log"
    else
        tail -n 40 "$log" >&2
        echo "[fuzz] $target FAILED; the input is in fuzz/artifacts/$target/ (full log: $log)" >&2
        exit 1
    fi
done
