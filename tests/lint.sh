#!/usr/bin/env bash
# clang-tidy (.clang-tidy at the top) and cppcheck on the single header: the
# implementation TU without MI_USE_CURL and with it (libcurl loaded at run time, and
# linked). Any finding fails.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#define MI_IMPLEMENTATION\n#include "managed_identity.hpp"\n' > "$tmp/impl.cpp"
printf '#include "managed_identity.hpp"\nint main() { return mi::to_string(mi::Source::AzureML).size() == 7 ? 0 : 1; }\n' > "$tmp/decl.cpp"
passed=0; failed=0
run() {  # name, command...
  local name=$1; shift
  if "$@" >"$tmp/out" 2>&1 && ! grep -qE '(warning|error|style|performance|portability):' "$tmp/out"; then
    echo "PASS: $name"; passed=$((passed + 1))
  else
    echo "FAIL: $name"; grep -E 'warning|error|style|performance|portability' "$tmp/out" | head -40; failed=$((failed + 1))
  fi
}
if command -v clang-tidy >/dev/null; then
  run "clang-tidy decl" clang-tidy --quiet "$tmp/decl.cpp" -- -std=c++17 -I"$root"
  run "clang-tidy impl" clang-tidy --quiet "$tmp/impl.cpp" -- -std=c++17 -I"$root"
  if [ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ]; then
    run "clang-tidy impl curl" clang-tidy --quiet "$tmp/impl.cpp" -- -std=c++17 -DMI_USE_CURL -I"$root"
    run "clang-tidy impl curl linked" clang-tidy --quiet "$tmp/impl.cpp" -- -std=c++17 -DMI_USE_CURL -DMI_CURL_LINKED -I"$root"
  fi
else
  echo "SKIP: clang-tidy not installed"
fi
if command -v cppcheck >/dev/null; then
  # cppcheck does not read system headers, so the libcurl/OpenSSL part is left to clang-tidy.
  run "cppcheck impl" cppcheck --enable=warning,performance,portability --std=c++17 --language=c++ \
    --inline-suppr --quiet --error-exitcode=1 -D__linux__ -DMI_IMPLEMENTATION -I"$root" "$tmp/impl.cpp"
else
  echo "SKIP: cppcheck not installed"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
