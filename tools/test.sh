#!/usr/bin/env bash
# Builds everything and runs every test. On a fresh Debian/Ubuntu machine it
# first installs what is missing (doctest-dev, libcurl4-openssl-dev, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh doctest-dev libcurl4-openssl-dev libssl-dev
python3 amalgamate.py --check
build="${MI_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DMI_USE_CURL=ON >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
ctest --output-on-failure -j"$(nproc)"
