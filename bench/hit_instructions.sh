#!/usr/bin/env bash
# Instructions per cached AcquireToken (callgrind): runs bench/hit_instructions.cpp with
# 20 000 and 60 000 hits and divides the difference by 40 000, so start-up and the one
# miss cancel out. Needs g++ and valgrind.   bench/hit_instructions.sh [HEADER_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
inc="${1:-$root}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
g++ -std=c++17 -O2 -DNDEBUG -I"$inc" "$root/bench/hit_instructions.cpp" -o "$out/hit" -pthread
refs() {
  # The transport is injected: nothing is sent anywhere; the override keeps it that way regardless.
  env -i AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9 \
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" "$out/hit" "$1" 2>&1 |
    awk '/I *refs:/ {gsub(",", "", $NF); print $NF}'
}
a=$(refs 20000)
b=$(refs 60000)
echo "instructions per cached AcquireToken: $(( (b - a) / 40000 )) (header from $inc)"
