#!/usr/bin/env bash
# Builds everything and runs every test. On a fresh Debian/Ubuntu machine it
# first installs what is missing (doctest-dev, libcurl4-openssl-dev, ...).
#   1. the header is in sync with its parts;
#   2. the threaded tests under TSan;
#   3. the Windows build (mingw-w64) and its tests under Wine (MI_SKIP_WINDOWS=1 skips it);
#   4. the whole suite (unit, loopback, end-to-end, compile matrix, lint,
#      consumers, fuzz corpus replay) built with ASan + UBSan; its ctest summary ends the output.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
bash tools/install_deps.sh doctest-dev libcurl4-openssl-dev libssl-dev pkg-config clang clang-tidy cppcheck meson

echo "== 1. amalgamation"
python3 amalgamate.py --check

echo "== 2. threaded tests under ThreadSanitizer"
tsan="${MI_BUILD_DIR:-build}-tsan"
cmake -S . -B "$tsan" -DCMAKE_BUILD_TYPE=Debug -DMI_USE_CURL=ON -DMI_SANITIZE=thread -DMI_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$tsan" -j"$jobs" --target test_client_imds test_client_sources test_http test_socket_resolve test_cache_availability
(cd "$tsan" && ctest --output-on-failure -j"$jobs" -R '^(client_imds|client_sources|http|socket_resolve|cache_availability)$')

if [ "${MI_SKIP_WINDOWS:-0}" != 1 ] && [ -f tools/test_windows.sh ]; then
  echo "== 3. Windows (mingw-w64 + Wine)"
  bash tools/test_windows.sh
fi

echo "== 4. the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer"
build="${MI_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DMI_USE_CURL=ON -DMI_SANITIZE=address,undefined >/dev/null
cmake --build "$build" -j"$jobs"
cd "$build"
ctest --output-on-failure -j"$jobs"
