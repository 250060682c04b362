#!/usr/bin/env bash
# Build cost of managed_identity.hpp (issue 5, item 4), reported in BENCHMARKS.md:
#   1. time a declarations-only #include adds to compiling an empty .cpp at -O2 (target < 150 ms),
#      split into the standard headers it includes and the library's own declarations;
#   2. compile time of the implementation TU (cmake/managed_identity_impl.cpp) at -O2
#      (target < 3 s), without and with MI_USE_CURL;
#   3. size of a stripped mi-token (examples/mi_token/) at -O2 without and with libcurl
#      (target < 300 KB without).
#
#   bench/build_cost.sh [-n RUNS] [-c CXX] [-o OUTDIR]      (defaults: 9, g++, build-bench-cost)
#
# Each time is the median CPU time (user + sys) of RUNS compilations; the minimum and the
# median wall time are printed too. Needs g++ (or -c CXX), and for the
# curl rows libcurl4-openssl-dev and libssl-dev.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=9
CXX=g++
OUT="$ROOT/build-bench-cost"
while getopts "n:c:o:h" opt; do
  case "$opt" in
    n) RUNS="$OPTARG" ;;
    c) CXX="$OPTARG" ;;
    o) OUT="$OPTARG" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
mkdir -p "$OUT"
FLAGS=(-std=c++17 -O2 -DNDEBUG -I"$ROOT")

# "wall_ms cpu_ms" of one run of "$@" (cpu = user + sys of the child), output discarded.
# The compiler is single-threaded, so on an idle machine the two agree; on a shared one
# the CPU time is the figure that other work disturbs least, and it is the one reported.
time_ms() {
  local f
  f=$(mktemp)
  /usr/bin/time -f "%e %U %S" -o "$f" "$@" >/dev/null 2>&1
  awk '{printf "%d %d\n", $1 * 1000, ($2 + $3) * 1000}' "$f"
  rm -f "$f"
}

# "cpu_median cpu_min wall_median" of RUNS runs of "$@"
measure() {
  local walls=() cpus=() w c
  for ((i = 0; i < RUNS; i++)); do
    read -r w c < <(time_ms "$@")
    walls+=("$w")
    cpus+=("$c")
  done
  local cm cmin wm
  read -r cm cmin < <(printf '%s\n' "${cpus[@]}" | sort -n | awk '{a[NR]=$1} END {print ((NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)), a[1]}')
  wm=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {print ((NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}')
  echo "$cm $cmin $wm"
}

# ---- sources ------------------------------------------------------------------------------
cat > "$OUT/empty.cpp" <<'EOF'
int main() { return 0; }
EOF
# <string> alone: the floor for any header whose API has a std::string in it.
cat > "$OUT/string_only.cpp" <<'EOF'
#include <string>
int main() { return 0; }
EOF
cat > "$OUT/decl.cpp" <<'EOF'
#include "managed_identity.hpp"
int main() { return 0; }
EOF
# The standard headers the declarations half includes (read from the header itself).
{
  awk '/^#if defined\(MI_IMPLEMENTATION\)/ {exit} /^#include </ {print}' "$ROOT/managed_identity.hpp"
  echo 'int main() { return 0; }'
} > "$OUT/std_only.cpp"
# A TU that uses the API, as a caller's file would (declarations only).
cat > "$OUT/use.cpp" <<'EOF'
#include "managed_identity.hpp"
int use() {
  auto c = mi::New(mi::SystemAssigned());
  if (!c) return 1;
  auto t = c->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  return t ? static_cast<int>(t->access_token.size()) : 2;
}
int main() { return use(); }
EOF

echo "compiler: $($CXX --version | head -1); flags: ${FLAGS[*]} -c; runs: $RUNS; loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "header: $(wc -c < "$ROOT/managed_identity.hpp") bytes, $(wc -l < "$ROOT/managed_identity.hpp") lines"
echo

# ---- 1. declarations-only include -------------------------------------------------------------
read -r empty_med empty_min empty_wall < <(measure "$CXX" "${FLAGS[@]}" -c "$OUT/empty.cpp" -o "$OUT/empty.o")
read -r str_med str_min str_wall < <(measure "$CXX" "${FLAGS[@]}" -c "$OUT/string_only.cpp" -o "$OUT/string_only.o")
read -r std_med std_min std_wall < <(measure "$CXX" "${FLAGS[@]}" -c "$OUT/std_only.cpp" -o "$OUT/std_only.o")
read -r decl_med decl_min decl_wall < <(measure "$CXX" "${FLAGS[@]}" -c "$OUT/decl.cpp" -o "$OUT/decl.o")
read -r use_med use_min use_wall < <(measure "$CXX" "${FLAGS[@]}" -c "$OUT/use.cpp" -o "$OUT/use.o")
printf '%-62s %8s %8s %8s\n' "1. compile at -O2, CPU ms (wall ms)" median min wall
printf '%-62s %8d %8d %8d\n' "empty .cpp" "$empty_med" "$empty_min" "$empty_wall"
printf '%-62s %8d %8d %8d\n' "empty .cpp + <string> alone" "$str_med" "$str_min" "$str_wall"
printf '%-62s %8d %8d %8d\n' "empty .cpp + the standard headers the declarations include" "$std_med" "$std_min" "$std_wall"
printf '%-62s %8d %8d %8d\n' "empty .cpp + #include \"managed_identity.hpp\"" "$decl_med" "$decl_min" "$decl_wall"
printf '%-62s %8d %8d %8d\n' "a caller's TU: New + AcquireToken (declarations only)" "$use_med" "$use_min" "$use_wall"
add_med=$((decl_med - empty_med))
add_min=$((decl_min - empty_min))
own_med=$((decl_med - std_med))
printf '%-62s %8d %8d\n' "=> the include adds" "$add_med" "$add_min"
printf '%-62s %8d %8s\n' "   of which the standard headers the fixed API names" "$((std_med - empty_med))" ""
printf '%-62s %8d %8s\n' "   of which the library's own declarations" "$own_med" ""
printf '%-62s %8d %8s\n' "   (floor: <string> alone adds)" "$((str_med - empty_med))" ""
echo

# ---- 2. the implementation TU -----------------------------------------------------------------
IMPL="$ROOT/cmake/managed_identity_impl.cpp"
read -r impl_med impl_min impl_wall < <(measure "$CXX" "${FLAGS[@]}" -c "$IMPL" -o "$OUT/impl.o")
curl_ok=0
if echo '#include <curl/curl.h>
#include <openssl/ssl.h>' | "$CXX" -x c++ -fsyntax-only - >/dev/null 2>&1; then curl_ok=1; fi
printf '%-62s %8s %8s %8s\n' "2. implementation TU at -O2, CPU ms (wall ms)" median min wall
printf '%-62s %8d %8d %8d\n' "cmake/managed_identity_impl.cpp" "$impl_med" "$impl_min" "$impl_wall"
if [ "$curl_ok" = 1 ]; then
  read -r implc_med implc_min implc_wall < <(measure "$CXX" "${FLAGS[@]}" -DMI_USE_CURL -c "$IMPL" -o "$OUT/impl_curl.o")
  printf '%-62s %8d %8d %8d\n' "the same with -DMI_USE_CURL" "$implc_med" "$implc_min" "$implc_wall"
fi
echo

# ---- 3. stripped mi-token ---------------------------------------------------------------------
"$CXX" "${FLAGS[@]}" "$ROOT"/examples/mi_token/*.cpp "$IMPL" -o "$OUT/mi-token" -pthread
strip -o "$OUT/mi-token.stripped" "$OUT/mi-token"
size_plain=$(stat -c %s "$OUT/mi-token.stripped")
printf '%-62s %8s\n' "3. stripped mi-token at -O2" bytes
printf '%-62s %8d  (%d KiB; dynamic libstdc++)\n' "without libcurl" "$size_plain" $((size_plain / 1024))
if [ "$curl_ok" = 1 ]; then
  "$CXX" "${FLAGS[@]}" -DMI_USE_CURL -DMI_CURL_LINKED "$ROOT"/examples/mi_token/*.cpp "$IMPL" -o "$OUT/mi-token-curl" -pthread \
    -lcurl -lssl -lcrypto
  strip -o "$OUT/mi-token-curl.stripped" "$OUT/mi-token-curl"
  size_curl=$(stat -c %s "$OUT/mi-token-curl.stripped")
  printf '%-62s %8d  (%d KiB; + %d shared libraries at run time)\n' "with libcurl linked (-DMI_CURL_LINKED -lcurl -lssl -lcrypto)" \
    "$size_curl" $((size_curl / 1024)) $(( $(ldd "$OUT/mi-token-curl" | wc -l) - $(ldd "$OUT/mi-token" | wc -l) ))
fi
echo

echo "Targets (issue 5):"
verdict() { printf '  %-7s %-62s %s\n' "$([ "$1" = 1 ] && echo met || echo MISSED)" "$2" "$3"; }
verdict "$([ "$add_med" -lt 150 ] && echo 1 || echo 0)" "declarations-only include adds < 150 ms" \
  "$add_med ms CPU (median; <string> alone adds $((str_med - empty_med)) ms)"
verdict "$([ "$own_med" -lt 150 ] && echo 1 || echo 0)" "  the library's own declarations add < 150 ms" "$own_med ms CPU (median)"
verdict "$([ "$impl_med" -lt 3000 ] && echo 1 || echo 0)" "implementation TU at -O2 < 3 s" "$impl_med ms CPU (median)"
verdict "$([ "$size_plain" -lt 307200 ] && echo 1 || echo 0)" "stripped mi-token without libcurl < 300 KB" \
  "$((size_plain / 1024)) KiB"
