#!/usr/bin/env bash
# Windows: cross-compiles the library, the tests and mi-token with mingw-w64 and runs
# them under Wine, so the Windows code (WinSock transport, environment, Arc key file,
# file detection) really runs, against the same loopback servers as on Linux.
#
#   bash tools/test_windows.sh
#
# Installs what is missing (Debian: g++-mingw-w64-x86-64-posix, wine64, doctest-dev,
# ninja-build). Build directory: $MI_WINDOWS_BUILD_DIR, default build-windows, with Wine's
# prefix inside it. Runs, each under a timeout and with the identity environment removed:
#   - the header compiled for Windows with the project's warnings as errors, with and
#     without exceptions and RTTI;
#   - each Windows test program (doctest), minus the cases listed in `skips` below;
#   - tests/e2e_mi_token.py with mi-token.exe and the examples for IMDS, App Service,
#     Azure ML, Cloud Shell, Service Fabric's no-libcurl error and the command line (the
#     emulator's Azure Arc key directory is a Linux path, so Arc runs in test_client_sources
#     and test_client_hostile instead).
# Built without libcurl: test_curl and Service Fabric's HTTPS cases are Linux only.
# Prints `N passed, M failed` last and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
started=$SECONDS

bash tools/install_deps.sh g++-mingw-w64-x86-64-posix wine64 doctest-dev ninja-build

build="${MI_WINDOWS_BUILD_DIR:-build-windows}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"
jobs="$(nproc)"
test_timeout=300

cxx="$(command -v x86_64-w64-mingw32-g++-posix || true)"
[ -n "$cxx" ] || { echo "test_windows: x86_64-w64-mingw32-g++-posix not found" >&2; exit 1; }
wine=""
for w in /usr/lib/wine/wine64 "$(command -v wine64 || true)" "$(command -v wine || true)"; do
  if [ -n "$w" ] && [ -x "$w" ]; then wine="$w"; break; fi
done
[ -n "$wine" ] || { echo "test_windows: wine64 not found" >&2; exit 1; }
wineserver=""
for w in "$(dirname "$wine")/wineserver64" "$(dirname "$wine")/wineserver" "$(command -v wineserver || true)"; do
  if [ -n "$w" ] && [ -x "$w" ]; then wineserver="$w"; break; fi
done

# Identity variables never reach a test or mi-token from this shell (Wine passes the
# environment through to Windows programs); the tests set what they need themselves.
for v in IDENTITY_ENDPOINT IDENTITY_HEADER IDENTITY_SERVER_THUMBPRINT MSI_ENDPOINT MSI_SECRET \
         IMDS_ENDPOINT AZURE_POD_IDENTITY_AUTHORITY_HOST DEFAULT_IDENTITY_CLIENT_ID; do
  unset "$v"
done

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); printf 'ok   %-24s %s\n' "$1" "$2"; }
fail() { failed=$((failed + 1)); failures+=("$1"); printf 'FAIL %-24s %s\n' "$1" "$2"; }

# ---- doctest: the Debian header alone, through a package config of its own -------------------
mkdir -p "$build/doctest/include/doctest"
cp /usr/include/doctest/doctest.h "$build/doctest/include/doctest/doctest.h"
cat >"$build/doctest/doctestConfig.cmake" <<'EOF'
# Written by tools/test_windows.sh: doctest for the mingw-w64 build, header only, without
# putting the host's /usr/include on the cross compiler's path.
if(NOT TARGET doctest::doctest)
  add_library(doctest::doctest INTERFACE IMPORTED)
  set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/include")
endif()
set(doctest_FOUND TRUE)
EOF

# ---- 1. Wine, started first so the prefix is created while the compiler runs --------------------
# Headless and quiet: a private prefix, no Mono/Gecko installers, no desktop menu entries.
export WINEPREFIX="$build/wineprefix"
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
export WINEARCH=win64
# One persistent server for the whole run, a child of this script (stopped and reaped at
# exit): each program then starts in a fraction of a second instead of seconds.
mkdir -p "$WINEPREFIX"
server_pid=""
if [ -n "$wineserver" ]; then
  "$wineserver" -f -p >/dev/null 2>&1 &
  server_pid=$!
fi
stop_wineserver() {
  if [ -n "$server_pid" ]; then
    "$wineserver" -k >/dev/null 2>&1 || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap stop_wineserver EXIT
boot_pid=""
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  echo "== Windows: creating the Wine prefix (in the background)"
  timeout 300 "$wine" wineboot -i >"$build/wineboot.log" 2>&1 &
  boot_pid=$!
fi

# ---- 2. the header, warnings as errors -----------------------------------------------------------
echo "== Windows: the header with -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Werror"
warn=(-std=c++17 -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Werror -fsyntax-only -I"$root")
for mode in exceptions no-exceptions; do
  extra=()
  [ "$mode" = no-exceptions ] && extra=(-fno-exceptions -fno-rtti)
  if out="$("$cxx" "${warn[@]}" "${extra[@]}" cmake/managed_identity_impl.cpp 2>&1)"; then
    pass "warnings ($mode)" "clean"
  else
    fail "warnings ($mode)" "compiler output:"
    printf '%s\n' "$out" | head -40
  fi
done

# ---- 3. configure and build ----------------------------------------------------------------------
echo "== Windows: building with $cxx"
tests=(json response http api sources_detection socket_resolve
       client_imds client_sources client_service_fabric client_hostile client_secrets
       client_probe client_workload_identity)
targets=(mi-token system_assigned user_assigned)
for t in "${tests[@]}"; do targets+=("test_$t"); done
# Ninja: the Makefile generator builds several targets one after the other (.NOTPARALLEL),
# and each test is a single translation unit, so only Ninja keeps every core busy.
if [ -f "$build/CMakeCache.txt" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$build/CMakeCache.txt"; then
  rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
fi
# -Og: as fast to compile as -O0, and the statically linked programs link much faster.
cmake -S . -B "$build" -G Ninja \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/mingw-w64-x86_64.cmake" \
  -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_FLAGS="-Og" \
  -DMI_USE_CURL=OFF -DMI_INSTALL=OFF -DMI_BUILD_TESTS=ON -DMI_BUILD_EXAMPLES=ON \
  -Ddoctest_DIR="$build/doctest" >"$build/configure.log" 2>&1 || {
  cat "$build/configure.log"
  exit 1
}
build_started=$SECONDS
cmake --build "$build" -j"$jobs" --target "${targets[@]}" >"$build/build.log" 2>&1 || {
  grep -E "error|FAILED" "$build/build.log" | head -60
  echo "test_windows: the build failed (full log: $build/build.log)" >&2
  exit 1
}
echo "built ${#targets[@]} programs in $((SECONDS - build_started)) s"
if [ -n "$boot_pid" ]; then
  boot_rc=0
  wait "$boot_pid" || boot_rc=$?
  [ "$boot_rc" -eq 0 ] || { cat "$build/wineboot.log"; echo "test_windows: wineboot failed ($boot_rc)" >&2; exit 1; }
fi

# ---- 4. the tests under Wine ---------------------------------------------------------------------
# Test cases Wine cannot run, as "program|doctest name pattern|reason".
skips=(
  "test_client_sources|*symbolic link named .key*|Wine 8's CreateSymbolicLink reports success but creates no link"
)

# Runs one doctest program; pass = exit 0, doctest's SUCCESS line and no crash report.
run_test() {
  local name="$1" exe="$build/tests/$1.exe" log="$build/$1.log" args=() s prog pattern reason
  for s in "${skips[@]}"; do
    IFS='|' read -r prog pattern reason <<<"$s"
    if [ "$prog" = "$name" ]; then
      args+=("--test-case-exclude=$pattern")
      echo "SKIP $name '$pattern': $reason"
    fi
  done
  local t0=$SECONDS rc=0 summary
  timeout -k 10 "$test_timeout" "$wine" "$exe" --no-colors=true "${args[@]}" >"$log" 2>&1 || rc=$?
  # "[doctest] test cases: 19 | 19 passed | 0 failed | 0 skipped" -> "19 passed, 0 failed, 0 skipped"
  summary="$(tr -d '\r' <"$log" | sed -n 's/^\[doctest\] test cases: *[0-9]* *| *\([0-9]*\) passed *| *\([0-9]*\) failed *| *\([0-9]*\) skipped.*/\1 passed, \2 failed, \3 skipped/p')"
  if [ "$rc" -eq 0 ] && grep -q 'Status: SUCCESS!' "$log" && ! grep -qE 'Unhandled (exception|page fault)|^wine: ' "$log"; then
    pass "$name" "cases: $summary ($((SECONDS - t0)) s)"
  else
    fail "$name" "exit $rc after $((SECONDS - t0)) s${summary:+, cases: $summary} (log: $log)"
    tr -d '\r' <"$log" | grep -v '^[[:space:]]*$' | tail -60
  fi
}

echo "== Windows: the tests under Wine ($("$wine" --version 2>/dev/null || echo wine))"
for t in "${tests[@]}"; do run_test "test_$t"; done

# mi-token.exe and the two examples end to end against the emulator, through wrappers that
# run them under Wine (the e2e script gives each run a clean environment of its own).
mkdir -p "$build/wine-bin"
for prog in mi-token system_assigned user_assigned; do
  cat >"$build/wine-bin/$prog" <<EOF
#!/bin/sh
export WINEPREFIX='$WINEPREFIX' WINEDEBUG=-all WINEDLLOVERRIDES='$WINEDLLOVERRIDES' WINEARCH=win64
exec '$wine' '$build/examples/$prog.exe' "\$@"
EOF
  chmod +x "$build/wine-bin/$prog"
done
t0=$SECONDS
rc=0
timeout -k 10 600 python3 tests/e2e_mi_token.py "$build/wine-bin/mi-token" \
  imds_ appservice_ azureml_ cloudshell_ servicefabric_ usage_ source_detection >"$build/e2e.log" 2>&1 || rc=$?
e2e_summary="$(tr -d '\r' <"$build/e2e.log" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1 || true)"
e2e_skipped="$(tr -d '\r' <"$build/e2e.log" | grep -E '^\([0-9]+ skipped\)' | tail -1 || true)"
if [ "$rc" -eq 0 ] && [ -n "$e2e_summary" ]; then
  pass "e2e_mi_token (mi-token.exe)" "cases: $e2e_summary${e2e_skipped:+ $e2e_skipped} ($((SECONDS - t0)) s)"
  tr -d '\r' <"$build/e2e.log" | grep '^SKIP' || true
else
  fail "e2e_mi_token (mi-token.exe)" "exit $rc after $((SECONDS - t0)) s: ${e2e_summary:-no summary} (log: $build/e2e.log)"
  tr -d '\r' <"$build/e2e.log" | grep -v '^ok ' | tail -60
fi

echo "Windows part took $((SECONDS - started)) s"
[ "$failed" -eq 0 ] || echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
