// The peers' side of bench/compare: MSAL for Node (ManagedIdentityApplication) and
// Azure Identity for JS (ManagedIdentityCredential), system-assigned, on IMDS through
// AZURE_POD_IDENTITY_AUTHORITY_HOST (both honour it; see BENCHMARKS.md).
//
//   node --require ./guard.js peer.js msal|identity first RESOURCE
//   node --require ./guard.js peer.js msal|identity cached N RESOURCE
//   node --require ./guard.js peer.js msal|identity concurrent N RESOURCE
//
// Prints one JSON object (never the token) and exits 0; on failure a message on
// stderr and exit 1. Mirrors mi-token (first) and mi-bench-peer (cached, concurrent).
'use strict';

function usage() {
  process.stderr.write('usage: peer.js msal|identity first RESOURCE | cached N RESOURCE | concurrent N RESOURCE\n');
  process.exit(2);
}

const [lib, mode, ...rest] = process.argv.slice(2);
if (!['msal', 'identity'].includes(lib) || !['first', 'cached', 'concurrent'].includes(mode)) usage();
const n = mode === 'first' ? 1 : Number(rest[0]);
const resource = mode === 'first' ? rest[0] : rest[1];
if (!resource || !Number.isInteger(n) || n < 1) usage();

// Returns a function that acquires one token and resolves to {chars, fromCache}.
function makeAcquire() {
  if (lib === 'msal') {
    const { ManagedIdentityApplication } = require('@azure/msal-node');
    const app = new ManagedIdentityApplication();  // system-assigned
    return async () => {
      const r = await app.acquireToken({ resource });
      return { chars: r.accessToken.length, fromCache: r.fromCache === true };
    };
  }
  const { ManagedIdentityCredential } = require('@azure/identity');
  const credential = new ManagedIdentityCredential();  // system-assigned
  const scope = resource.replace(/\/+$/, '') + '/.default';
  return async () => {
    const t = await credential.getToken(scope);
    if (!t || !t.token) throw new Error('no token');
    return { chars: t.token.length, fromCache: undefined };  // the credential does not say
  };
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function main() {
  const acquire = makeAcquire();
  if (mode === 'first') {
    const r = await acquire();
    out({ ok: true, token_chars: r.chars });
    return;
  }
  if (mode === 'cached') {
    const t0 = process.hrtime.bigint();
    const first = await acquire();
    const t1 = process.hrtime.bigint();
    let notCached = 0;
    for (let i = 0; i < n; i++) {
      const r = await acquire();
      if (r.fromCache === false) notCached++;
    }
    const t2 = process.hrtime.bigint();
    if (notCached > 0) throw new Error(`${notCached} of ${n} calls were not served from the cache`);
    out({ first_ms: Number(t1 - t0) / 1e6, calls: n, per_call_ns: Number(t2 - t1) / n, token_chars: first.chars });
    return;
  }
  // concurrent: n acquisitions started at once on one cold client
  const t0 = process.hrtime.bigint();
  const results = await Promise.allSettled(Array.from({ length: n }, () => acquire()));
  const t1 = process.hrtime.bigint();
  const ok = results.filter((r) => r.status === 'fulfilled').length;
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) process.stderr.write(`peer.js: ${failed.reason && failed.reason.message}\n`);
  out({ callers: n, ok, last_ms: Number(t1 - t0) / 1e6 });
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`peer.js (${lib}): ${e && e.message ? e.message.split('\n')[0] : e}\n`);
    process.exit(1);
  },
);
