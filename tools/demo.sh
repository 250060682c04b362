#!/usr/bin/env bash
# The demo: builds mi-token, starts the local IMDS emulator on a free loopback
# port, and acquires a token twice: first from the endpoint, then from the cache.
# (A developer machine has no Azure metadata service; the emulator stands in.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
build="${MI_BUILD_DIR:-build-demo}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMI_BUILD_TESTS=OFF -DMI_USE_CURL=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target mi-token >/dev/null
workdir=$(mktemp -d)
python3 tools/mi_emulator.py --source imds --env-file "$workdir/env" >"$workdir/out" 2>"$workdir/err" &
emulator=$!
trap 'kill $emulator 2>/dev/null || true; rm -rf "$workdir"' EXIT
for _ in $(seq 100); do grep -q READY "$workdir/out" 2>/dev/null && break; sleep 0.05; done
grep -q READY "$workdir/out" || { echo "the emulator did not start:"; cat "$workdir/err"; exit 1; }
# shellcheck disable=SC1091
. "$workdir/env"
echo "emulator: $AZURE_POD_IDENTITY_AUTHORITY_HOST (AZURE_POD_IDENTITY_AUTHORITY_HOST points IMDS there)"
echo "\$ mi-token --repeat 2 https://vault.azure.net"
"$build/examples/mi-token" --repeat 2 https://vault.azure.net
echo "requests that reached the emulator: $(python3 -c "import json,urllib.request;print(json.load(urllib.request.build_opener(urllib.request.ProxyHandler({})).open('$AZURE_POD_IDENTITY_AUTHORITY_HOST/__emulator/stats'))['token_requests'])")"
