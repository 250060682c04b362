#!/usr/bin/env bash
# The demo: builds mi-token, starts the local IMDS emulator on a free loopback
# port, and acquires a token twice: first from the endpoint, then from the cache.
# (A developer machine has no Azure metadata service; the emulator stands in.)
# Then the same for AKS workload identity: the emulator plays Microsoft Entra ID
# over HTTPS on loopback, with a CA of its own that mi-token trusts with --ca-file.
set -euo pipefail
cd "$(dirname "$0")/.."
# libcurl's and OpenSSL's headers: workload identity's HTTPS (libcurl is loaded at run time).
bash tools/install_deps.sh libcurl4-openssl-dev libssl-dev
build="${MI_BUILD_DIR:-build-demo}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMI_BUILD_TESTS=OFF -DMI_USE_CURL=AUTO >/dev/null
cmake --build "$build" -j"$(nproc)" --target mi-token >/dev/null
workdir=$(mktemp -d)
emulators=()
cleanup() {
  for pid in "${emulators[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${emulators[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$workdir"
}
trap cleanup EXIT
# start_emulator NAME ARGS...: starts tools/mi_emulator.py, waits for READY, loads its exports.
start_emulator() {
  local name=$1
  shift
  python3 tools/mi_emulator.py "$@" --env-file "$workdir/$name.env" >"$workdir/$name.out" 2>"$workdir/$name.err" &
  emulators+=($!)
  for _ in $(seq 200); do grep -q READY "$workdir/$name.out" 2>/dev/null && break; sleep 0.05; done
  grep -q READY "$workdir/$name.out" || { echo "the $name emulator did not start:"; cat "$workdir/$name.err"; exit 1; }
  # shellcheck disable=SC1090
  . "$workdir/$name.env"
}

start_emulator imds --source imds
echo "emulator: $AZURE_POD_IDENTITY_AUTHORITY_HOST (AZURE_POD_IDENTITY_AUTHORITY_HOST points IMDS there)"
echo "\$ mi-token --repeat 2 https://vault.azure.net"
"$build/examples/mi-token" --repeat 2 https://vault.azure.net
echo "requests that reached the emulator: $(python3 -c "import json,urllib.request;print(json.load(urllib.request.build_opener(urllib.request.ProxyHandler({})).open('$AZURE_POD_IDENTITY_AUTHORITY_HOST/__emulator/stats'))['token_requests'])")"

echo
start_emulator workload --source workload
echo "emulator: $AZURE_AUTHORITY_HOST (Entra ID's token endpoint; AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID"
echo "and AZURE_CLIENT_ID as the workload identity webhook sets them in a pod)"
echo "\$ mi-token --ca-file \"\$MI_EMULATOR_CA_FILE\" --repeat 2 https://vault.azure.net"
# Entra ID's requests honour HTTPS_PROXY: none here, so nothing leaves the loopback interface.
if ! env -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy \
    "$build/examples/mi-token" --ca-file "$MI_EMULATOR_CA_FILE" --repeat 2 https://vault.azure.net 2>"$workdir/err"; then
  if grep -q MI_USE_CURL "$workdir/err"; then
    echo "skipped: mi-token was built without libcurl's and OpenSSL's headers (workload identity needs HTTPS)"
  else
    cat "$workdir/err" >&2
    exit 1
  fi
fi
