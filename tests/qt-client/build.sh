#!/usr/bin/env bash
# Builds kapsule-qt-client into target/qt-client (or $1) with Debian's Qt 6 (qt6-base-dev, cmake;
# tests/env/up.sh installs them). Idempotent: a second run rebuilds only what changed. Prints the
# binary's path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/../../target/qt-client}
for tool in cmake /usr/lib/qt6/bin/qdbusxml2cpp; do
    command -v "$tool" >/dev/null || { echo "qt-client/build.sh: $tool is missing; run tests/env/up.sh" >&2; exit 1; }
done
cmake -S "$here" -B "$out" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$out" -j"$(nproc)" >/dev/null
echo "$out/kapsule-qt-client"
