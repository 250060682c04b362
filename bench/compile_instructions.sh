#!/usr/bin/env bash
# Instructions the compiler executes (driver, cc1plus and the assembler, counted by callgrind)
# to build the implementation TU at -O2, for one or more copies of the header:
#
#   bench/compile_instructions.sh [HEADER_DIR ...]        (default: this checkout)
#
# Unlike a CPU time, the count does not move with the machine's load, so two headers can be
# compared on a shared machine in one run (a difference of 1 % is real). It is a proxy for
# compile time, not the time itself; bench/build_cost.sh measures the time. Each header takes
# about 50 times its compile time (4 to 5 minutes here). Needs g++ and valgrind.
#   e.g.  git show 3b4ab33:managed_identity.hpp > /tmp/old/managed_identity.hpp
#         bench/compile_instructions.sh /tmp/old .
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -gt 0 ] || set -- "$root"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
printf '#define MI_IMPLEMENTATION\n#include "managed_identity.hpp"\n' > "$out/impl.cpp"
for dir in "$@"; do
  rm -f "$out"/cg.*
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.%p" \
    g++ -std=c++17 -O2 -DNDEBUG -I"$dir" -c "$out/impl.cpp" -o "$out/impl.o" >/dev/null 2>&1
  total=$(awk '/^summary:/ {s += $2} END {print s}' "$out"/cg.*)
  printf '%s instructions to compile the implementation TU, text %s B (header from %s)\n' \
    "$total" "$(size "$out/impl.o" | awk 'NR == 2 {print $1}')" "$dir"
done
