#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) and
# runs each for a set time, at most FUZZ_PARALLEL at once, one process each.
#
#   tests/fuzz/run_fuzzers.sh                 # every target, 600 s each, two at a time
#   FUZZ_SECONDS=60 tests/fuzz/run_fuzzers.sh json http
#
# Environment:
#   FUZZ_SECONDS         seconds per target (default 600)
#   FUZZ_PARALLEL        targets run at once (default 2)
#   FUZZ_BUILD_DIR       binaries, working corpora, logs, artifacts (default <repo>/build-fuzz)
#   FUZZ_RSS_LIMIT_MB    libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_EXTRA_CXXFLAGS  extra compiler flags, e.g. -DMI_FUZZ_ALLOW_HTAB_IN_REALM to look
#                        past an open finding (docs/hardening.md, Fuzzing)
#   CXX_FUZZ             the clang++ to use (default clang++)
#
# The repository corpus (tests/fuzz/corpus/<target>) seeds a working corpus in the build
# directory (crash-* reproducers excluded: they would stop the run at once); new inputs
# go there, crashes to <build>/artifacts/<target>/. The summary (executions, exec/s,
# cov, ft, corpus size, crashes) is printed and written to <build>/summary.txt.
# Exit status: 0 when no target crashed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seconds="${FUZZ_SECONDS:-600}"
parallel="${FUZZ_PARALLEL:-2}"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
rss="${FUZZ_RSS_LIMIT_MB:-2048}"
cxx="${CXX_FUZZ:-clang++}"
read -r -a extra <<< "${FUZZ_EXTRA_CXXFLAGS:-}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json http expires_on arc_realm)

# Largest input per target: the HTTP body limit in the target is 8192 bytes.
max_len() {
  case "$1" in
    http) echo 16384 ;;
    json) echo 8192 ;;
    expires_on) echo 256 ;;
    arc_realm) echo 1024 ;;
    *) echo 4096 ;;
  esac
}

mkdir -p "$build"
for t in "${targets[@]}"; do
  [ -f "$here/fuzz_$t.cpp" ] || { echo "unknown target: $t" >&2; exit 2; }
  echo "building fuzz_$t" >&2
  "$cxx" -std=c++17 -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -I"$root" -I"$here" "${extra[@]}" "$here/fuzz_$t.cpp" -o "$build/fuzz_$t"
done

run_one() {
  local t="$1"
  local corpus="$build/corpus/$t" artifacts="$build/artifacts/$t/" logs="$build/logs/$t"
  mkdir -p "$corpus" "$artifacts" "$logs"
  find "$here/corpus/$t" -maxdepth 1 -type f ! -name 'crash-*' -exec cp -n {} "$corpus/" \;
  local dict=()
  [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
  # -jobs=1 runs the fuzzer in one child process whose output goes to fuzz-0.log.
  (cd "$logs" && rm -f fuzz-0.log &&
    "$build/fuzz_$t" "$corpus" "${dict[@]}" -max_total_time="$seconds" -jobs=1 -workers=1 \
      -rss_limit_mb="$rss" -max_len="$(max_len "$t")" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$artifacts" >"$logs/driver.log" 2>&1) || true
}

summarize() {
  local t="$1" log="$build/logs/$t/fuzz-0.log"
  local done_line execs eps cov ft corp crashes
  done_line="$(grep -E '^#[0-9]+' "$log" 2>/dev/null | tail -n 1 || true)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" 2>/dev/null | tail -n 1)"
  eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" 2>/dev/null | tail -n 1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$done_line")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$done_line")"
  corp="$(find "$build/corpus/$t" -type f | wc -l)"
  crashes="$(find "$build/artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)"
  printf '%-11s %12s %8s %6s %6s %7s %8s\n' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$corp" "$crashes"
}

for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  echo "fuzzing $t for ${seconds}s" >&2
  run_one "$t" &
done
wait

{
  printf '%-11s %12s %8s %6s %6s %7s %8s\n' target executions exec/s cov ft corpus findings
  for t in "${targets[@]}"; do summarize "$t"; done
} | tee "$build/summary.txt"

status=0
for t in "${targets[@]}"; do
  if [ -n "$(find "$build/artifacts/$t" -type f | head -n 1)" ]; then
    echo "fuzz_$t: findings in $build/artifacts/$t (log: $build/logs/$t/fuzz-0.log)" >&2
    status=1
  fi
done
exit "$status"
