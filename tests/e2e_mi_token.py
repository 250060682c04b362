#!/usr/bin/env python3
"""End-to-end test: the mi-token tool against tools/mi_emulator.py.

    python3 tests/e2e_mi_token.py PATH/TO/mi-token [CASE_SUBSTRING...]

Each source has one function (imds, appservice, azureml, cloudshell, arc, servicefabric) that
starts the emulator for that source, runs mi-token with only the emulator's exports added to a
clean environment, and checks the JSON lines, the cache, the emulator's request counters, the
identity echo, retries (only when they wait at most 3 s of real time), errors and exit codes.

Nothing is ever sent to the real IMDS address: IMDS runs always set AZURE_POD_IDENTITY_AUTHORITY_HOST
to the emulator, and every other run sets it to a local trap listener, so an unexpected IMDS
fallback is caught (the trap must see no connection) instead of leaving the machine.

Prints `N passed, M failed` last and exits 1 if anything failed.
"""
import base64
import datetime
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EMULATOR = os.path.join(ROOT, "tools", "mi_emulator.py")
RESOURCE = "https://vault.azure.net"
LIFETIME = 86400
EXPIRES_ON_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")
ARC_TOKEN_DIR = "/var/opt/azcmagent/tokens"   # the library's Linux default
ARC_HIMDS = "/opt/azcmagent/bin/himds"
# Retry waits per source (docs/protocol.md §8): IMDS 1 s, 2 s, 4 s; the others 1 s each; up to +20 % jitter.
RETRY_WAITS = {"imds": [1, 2, 4], "default": [1, 1, 1]}
MAX_REAL_WAIT = 3.0
# Everything a client could take an identity or a proxy from: never inherited.
KEEP_VARS = ("PATH", "SYSTEMROOT", "SystemRoot", "WINDIR", "TZ", "LANG", "LC_ALL", "TMPDIR", "TEMP", "TMP",
             "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS")

SOURCE_NAMES = {"imds": "DefaultToIMDS", "appservice": "AppService", "azureml": "AzureML",
                "cloudshell": "CloudShell", "arc": "AzureArc", "servicefabric": "ServiceFabric",
                "workload": "WorkloadIdentity"}
SECRET_VARS = ("IDENTITY_HEADER", "MSI_SECRET")
# mi-token's exit statuses (its --help and the README list them).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ENDPOINT, EXIT_REFUSED, EXIT_TRANSPORT = 0, 1, 2, 3, 4, 5


# ---- bookkeeping ----------------------------------------------------------------

class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0


RESULTS = Results()
FILTERS = []


class Case:
    """One test case: a set of checks that pass or fail together."""

    def __init__(self, name):
        self.name = name
        self.errors = []

    def check(self, cond, what):
        if not cond:
            self.errors.append(what)
        return bool(cond)

    def eq(self, actual, expected, what):
        return self.check(actual == expected, "%s: got %r, expected %r" % (what, actual, expected))


def case(fn):
    """Runs fn(Case) as a test case (unless filtered out) and records the outcome."""
    name = fn.__name__
    if FILTERS and not any(f in name for f in FILTERS):
        return
    c = Case(name)
    try:
        skip = fn(c)
    except Exception:  # a crash in a case is a failure of that case, not of the run
        c.errors.append("exception:\n" + traceback.format_exc())
        skip = None
    if isinstance(skip, str) and not c.errors:
        RESULTS.skipped += 1
        print("SKIP %s: %s" % (name, skip))
    elif c.errors:
        RESULTS.failed += 1
        print("FAIL %s" % name)
        for e in c.errors:
            print("     - " + e.replace("\n", "\n       "))
    else:
        RESULTS.passed += 1
        print("ok   %s" % name)
    sys.stdout.flush()


# ---- the IMDS trap ----------------------------------------------------------------

class Trap:
    """A listener on 127.0.0.1:0 that counts connections and closes them. Non-IMDS runs point
    AZURE_POD_IDENTITY_AUTHORITY_HOST here so a fallback to IMDS is seen and stays local."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def run(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopped:
                conn.close()
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.stopped = True
        try:
            # Wake accept() up.
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.sock.close()


TRAP = None


# ---- the emulator -------------------------------------------------------------------

class Emulator:
    def __init__(self, source, *args):
        self.source = source
        cmd = [sys.executable, EMULATOR, "--source", source] + [str(a) for a in args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killer = threading.Timer(30, self.proc.kill)  # never wait forever for READY
        killer.start()
        self.exports = {}
        try:
            pending = None  # a single-quoted value spanning lines (PEM text), until its closing quote
            for line in self.proc.stdout:
                if pending is not None:
                    name, value = pending
                    value += line.rstrip("\n")
                    if value.endswith("'"):
                        self.exports[name] = value[1:-1]
                        pending = None
                    else:
                        pending = (name, value + "\n")
                    continue
                line = line.strip()
                if line == "READY":
                    break
                if line.startswith("export "):
                    name, _, value = line[len("export "):].partition("=")
                    if value.startswith("'") and (len(value) == 1 or not value.endswith("'")):
                        pending = (name, value + "\n")
                    else:
                        self.exports[name] = value.strip("'")
            else:
                err = self.proc.stderr.read()
                raise RuntimeError("emulator %s did not start: %s" % (source, err.strip()))
        finally:
            killer.cancel()
        self.sni = self.exports.get("AZURE_KUBERNETES_SNI_NAME")
        if source == "imds":
            self.base = self.exports["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
        elif source == "workload":
            url = self.exports.get("AZURE_KUBERNETES_TOKEN_PROXY") or self.exports["AZURE_AUTHORITY_HOST"]
            self.base = re.match(r"^(https://[^/]+)", url).group(1)
        else:
            url = self.exports.get("IDENTITY_ENDPOINT") or self.exports.get("MSI_ENDPOINT")
            m = re.match(r"^(https?://[^/]+)", url)
            self.base = m.group(1)

    def control(self, method, path):
        """A control request (stats, rotation) to a workload emulator, with the SNI name it
        insists on in token-proxy mode (urllib sends none to an address)."""
        import http.client
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        host, port = self.base[len("https://"):].rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
        conn.sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10),
                                    server_hostname=self.sni or None)
        try:
            conn.request(method, path)
            return json.loads(conn.getresponse().read().decode("utf-8"))
        finally:
            conn.close()

    def stats(self):
        if self.source == "workload":
            return self.control("GET", "/__emulator/stats")
        ctx = None
        if self.base.startswith("https:"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(self.base + "/__emulator/stats", timeout=10, context=ctx) as r:
            return json.loads(r.read().decode("utf-8"))

    def env(self, **overrides):
        """A clean environment holding only the emulator's exports (plus the IMDS trap)."""
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env.update(self.exports)
        if self.source != "imds":
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = TRAP.url
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def secrets(self):
        out = [self.exports[k] for k in SECRET_VARS if k in self.exports]
        token_file = self.exports.get("AZURE_FEDERATED_TOKEN_FILE")
        if token_file and os.path.exists(token_file):
            with open(token_file) as f:
                assertion = f.read().strip()
            out += [assertion, assertion.split(".")[-1]] if assertion else []
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- running mi-token ------------------------------------------------------------------

class Run:
    def __init__(self, proc, elapsed):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed
        self.lines = []
        self.json_error = None
        for line in self.stdout.splitlines():
            try:
                self.lines.append(json.loads(line))
            except ValueError as e:
                self.json_error = "not JSON: %r (%s)" % (line[:200], e)

    def describe(self):
        return "rc=%s stdout=%r stderr=%r" % (self.rc, self.stdout[-600:], self.stderr[-1200:])


def mi_token(args, env, timeout=60):
    start = time.monotonic()
    proc = subprocess.run([MI_TOKEN] + [str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return Run(proc, time.monotonic() - start)


def token_payload(token):
    try:
        part = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode("utf-8"))
    except (IndexError, ValueError):
        return {}


def check_no_secrets(c, run, emu, tokens=()):
    """No token (other than in the JSON on stdout) and no secret anywhere it must not be."""
    for t in tokens:
        c.check(t not in run.stderr, "stderr contains an access token")
    for s in emu.secrets():
        c.check(s not in run.stderr and s not in run.stdout, "output contains a secret header value")


def check_tokens(c, run, emu, source, resource=RESOURCE, repeat=2, t0=None, lifetime=LIFETIME):
    """The common success checks; returns the parsed lines (or [])."""
    if not c.eq(run.rc, 0, "exit status (%s)" % run.describe()):
        return []
    c.check(run.json_error is None, "stdout: %s" % run.json_error)
    if not c.eq(len(run.lines), repeat, "number of JSON lines"):
        return []
    first = run.lines[0]
    expected_keys = {"accessToken", "expiresOn", "expires_on", "tokenType", "resource", "tokenSource", "source"}
    c.eq(set(first), expected_keys, "JSON keys")
    c.eq(first.get("tokenSource"), "IdentityProvider", "first tokenSource")
    for later in run.lines[1:]:
        c.eq(later.get("tokenSource"), "Cache", "later tokenSource")
        c.eq(later.get("accessToken"), first.get("accessToken"), "cached accessToken")
    for line in run.lines:
        c.eq(line.get("source"), SOURCE_NAMES[source], "source")
        c.eq(line.get("resource"), resource, "resource")
        c.eq(line.get("tokenType"), "Bearer", "tokenType")
        exp = line.get("expires_on")
        c.check(isinstance(exp, int), "expires_on is not an integer: %r" % (exp,))
        if isinstance(exp, int) and t0 is not None:
            c.check(abs(exp - (t0 + lifetime)) <= 60,
                    "expires_on %d is not now + %d s (+-60): now=%d" % (exp, lifetime, int(t0)))
        text = line.get("expiresOn", "")
        if c.check(EXPIRES_ON_RE.match(text or ""), "expiresOn format: %r" % (text,)) and isinstance(exp, int):
            local = datetime.datetime.fromtimestamp(exp).strftime("%Y-%m-%d %H:%M:%S")
            c.eq(text[:19], local, "expiresOn as local time of expires_on")
    payload = token_payload(first.get("accessToken", ""))
    c.eq(payload.get("aud"), resource, "token audience")
    check_no_secrets(c, run, emu, [first.get("accessToken", "x" * 64)])
    return run.lines


def check_stats(c, emu, token_requests=None, tokens_issued=None, **more):
    st = emu.stats()
    if token_requests is not None:
        c.eq(st["token_requests"], token_requests, "emulator token_requests")
    if tokens_issued is not None:
        c.eq(st["tokens_issued"], tokens_issued, "emulator tokens_issued")
    for k, v in more.items():
        c.eq(st[k], v, "emulator " + k)
    c.eq(st["unexpected"], 0, "emulator requests to unexpected paths")
    return st


def retry_wait(source, failures):
    waits = RETRY_WAITS.get(source, RETRY_WAITS["default"])
    return sum(waits[:failures]) * 1.2


# ---- shared case bodies --------------------------------------------------------------------

def basic(c, source, *emu_args, arc=False):
    """--repeat 2: one request, then the cache."""
    with Emulator(source, *emu_args) as emu:
        t0 = time.time()
        run = mi_token(["--repeat", 2, "--verbose", RESOURCE], emu.env())
        check_tokens(c, run, emu, source, t0=t0)
        if arc:
            check_stats(c, emu, token_requests=2, tokens_issued=1, challenges=1)
        else:
            check_stats(c, emu, token_requests=1, tokens_issued=1)
        src = mi_token(["--source"], emu.env())
        c.eq((src.rc, src.stdout.strip()), (0, SOURCE_NAMES[source]), "mi-token --source")


def user_assigned(c, source, flag, value, param, claim, *emu_args):
    """A user-assigned ID reaches the endpoint in `param` (percent-encoded on the wire, so it
    arrives intact), and the token (cached for the second call) names it in `claim`."""
    with Emulator(source, *emu_args) as emu:
        t0 = time.time()
        run = mi_token([flag, value, "--repeat", 2, RESOURCE], emu.env())
        lines = check_tokens(c, run, emu, source, t0=t0)
        st = emu.stats()
        last = st.get("last_token_request") or {}
        params = last.get("query") or {}
        if source == "cloudshell":
            params = last.get("body_params") or {}
        c.eq(params.get(param), value, "request parameter %s" % param)
        c.eq(st["tokens_issued"], 1, "emulator tokens_issued")
        if lines:
            c.eq(token_payload(lines[0]["accessToken"]).get(claim), value, "token identity claim %s" % claim)


def retries(c, source, failures, *emu_args):
    """--fail N --fail-status 503: succeeds after N retries, skipped if that would wait > 3 s."""
    wait = retry_wait(source, failures)
    if wait > MAX_REAL_WAIT:
        return "%d retries on %s would wait %.1f s of real time (> %.0f s)" % (failures, source, wait,
                                                                               MAX_REAL_WAIT)
    with Emulator(source, "--fail", failures, "--fail-status", 503, *emu_args) as emu:
        t0 = time.time()
        run = mi_token([RESOURCE], emu.env())
        check_tokens(c, run, emu, source, repeat=1, t0=t0)
        c.check(run.elapsed < 30, "retries took %.1f s" % run.elapsed)
        check_stats(c, emu, tokens_issued=1, failures=failures)
        st = emu.stats()
        if source == "cloudshell":
            # Beyond Go: a retried POST sends the same body again.
            c.eq((st["last_token_request"] or {}).get("body_params", {}).get("resource"), RESOURCE,
                 "resource in the retried POST body")


def no_retry(c, source, *emu_args):
    """--no-retry: one attempt, the 503 comes back at once."""
    with Emulator(source, "--fail", 5, "--fail-status", 503, *emu_args) as emu:
        run = mi_token(["--no-retry", RESOURCE], emu.env())
        c.eq(run.rc, EXIT_REFUSED, "exit status (%s)" % run.describe())
        c.eq(run.stdout, "", "stdout")
        c.check("status: 503" in run.stderr, "stderr names status 503: %r" % run.stderr)
        check_stats(c, emu, token_requests=1, tokens_issued=0)


def endpoint_400(c, source, *emu_args):
    """An endpoint answering 400 in its own error shape: exit 4 (refused), `error:` on stderr, no token."""
    with Emulator(source, "--fail", 100, "--fail-status", 400, *emu_args) as emu:
        run = mi_token(["--repeat", 2, RESOURCE], emu.env())
        c.eq(run.rc, EXIT_REFUSED, "exit status (%s)" % run.describe())
        c.eq(run.stdout, "", "stdout (no token)")
        c.check(run.stderr.startswith("error: "), "stderr starts with 'error: ': %r" % run.stderr)
        c.check("status: 400" in run.stderr, "stderr has 'status: 400': %r" % run.stderr)
        c.check("code: http_status" in run.stderr, "stderr has 'code: http_status': %r" % run.stderr)
        c.check("eyJ" not in run.stderr, "stderr looks like it holds a token")
        check_no_secrets(c, run, emu)
        # 400 is final: one attempt (Arc: the challenge leg is the one that failed).
        check_stats(c, emu, token_requests=1, tokens_issued=0)


def unsupported(c, source, flag, *emu_args):
    """mi::New refuses an ID kind the source cannot take, before any request."""
    with Emulator(source, *emu_args) as emu:
        run = mi_token([flag, "some-id", RESOURCE], emu.env())
        c.eq(run.rc, EXIT_FAILED, "exit status (%s)" % run.describe())
        c.check("code: unsupported_identity" in run.stderr, "stderr: %r" % run.stderr)
        st = emu.stats()
        c.eq(st["requests"], 0, "emulator requests")


# ---- IMDS ------------------------------------------------------------------------------------

def imds():
    if os.path.exists(ARC_HIMDS):
        print("SKIP imds: %s exists, so the environment selects Azure Arc" % ARC_HIMDS)
        RESULTS.skipped += 1
        return

    @case
    def imds_system_assigned(c):
        basic(c, "imds")

    @case
    def imds_client_id(c):
        user_assigned(c, "imds", "--client-id", "9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10", "client_id",
                      "appid")

    @case
    def imds_object_id(c):
        user_assigned(c, "imds", "--object-id", "0b2c7a5e-1111-2222-3333-444455556666", "object_id",
                      "oid")

    @case
    def imds_resource_id(c):
        rid = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
               "Microsoft.ManagedIdentity/userAssignedIdentities/my identity&x=1")
        user_assigned(c, "imds", "--resource-id", rid, "msi_res_id", "xms_mirid")

    @case
    def imds_default_scope_trimmed(c):
        with Emulator("imds") as emu:
            run = mi_token([RESOURCE + "/.default"], emu.env())
            check_tokens(c, run, emu, "imds", repeat=1)
            st = check_stats(c, emu, token_requests=1, tokens_issued=1)
            c.eq((st["last_token_request"] or {}).get("query", {}).get("resource"), RESOURCE, "sent resource")

    @case
    def imds_retry_fail_2(c):
        return retries(c, "imds", 2)

    @case
    def imds_retry_fail_1(c):
        return retries(c, "imds", 1, "--fail-body", "plain")

    @case
    def imds_no_retry(c):
        no_retry(c, "imds")

    @case
    def imds_endpoint_400(c):
        endpoint_400(c, "imds")

    @case
    def imds_examples(c):
        # The seed's examples, built next to mi-token: a token, its length and expiry, never the token.
        exe_dir, exe_name = os.path.split(MI_TOKEN)
        suffix = os.path.splitext(exe_name)[1]
        found = 0
        for name, args in (("system_assigned", []), ("user_assigned", ["my-client-id"])):
            path = os.path.join(exe_dir, name + suffix)
            if not os.path.exists(path):
                continue
            found += 1
            with Emulator("imds") as emu:
                proc = subprocess.run([path] + args, env=emu.env(), capture_output=True, text=True, timeout=60)
                c.eq(proc.returncode, 0, "%s exit status (stderr %r)" % (name, proc.stderr))
                c.check(re.search(r"token of \d+ characters", proc.stdout), "%s output: %r" % (name, proc.stdout))
                c.check("eyJ" not in proc.stdout + proc.stderr, "%s printed the token" % name)
                check_stats(c, emu, token_requests=1, tokens_issued=1)
                if args:
                    q = (emu.stats()["last_token_request"] or {}).get("query", {})
                    c.eq(q.get("client_id"), args[0], "%s client_id" % name)
        if not found:
            return "the examples are not built next to mi-token"

    @case
    def imds_timeout(c):
        with Emulator("imds", "--delay-ms", 5000) as emu:
            run = mi_token(["--timeout-ms", 300, "--no-retry", RESOURCE], emu.env())
            c.eq(run.rc, EXIT_NO_ENDPOINT, "exit status (%s)" % run.describe())
            c.check("code: timeout" in run.stderr, "stderr: %r" % run.stderr)
            c.check(run.elapsed < 4.0, "took %.1f s; the deadline was 0.3 s" % run.elapsed)

    @case
    def imds_claims_bypass_cache(c):
        with Emulator("imds") as emu:
            run = mi_token(["--claims", '{"access_token":{"xms_cc":{"values":["cp1"]}}}', "--repeat", 2,
                            RESOURCE], emu.env())
            if c.eq(run.rc, 0, "exit status (%s)" % run.describe()) and c.eq(len(run.lines), 2, "lines"):
                c.eq([x["tokenSource"] for x in run.lines], ["IdentityProvider"] * 2, "tokenSource")
                c.check(run.lines[0]["accessToken"] != run.lines[1]["accessToken"], "claims reused a token")
            check_stats(c, emu, token_requests=2, tokens_issued=2)

    @case
    def imds_refresh_in(c):
        # A server-chosen refresh time far ahead changes nothing for the second call (cache).
        with Emulator("imds", "--refresh-in", 3600) as emu:
            t0 = time.time()
            run = mi_token(["--repeat", 2, RESOURCE], emu.env())
            check_tokens(c, run, emu, "imds", t0=t0)
            check_stats(c, emu, token_requests=1, tokens_issued=1)

    @case
    def imds_short_lifetime_not_cached(c):
        # A token expiring within 5 minutes is returned but not cached.
        with Emulator("imds", "--lifetime", 120) as emu:
            t0 = time.time()
            run = mi_token(["--repeat", 2, RESOURCE], emu.env())
            if c.eq(run.rc, 0, "exit status (%s)" % run.describe()) and c.eq(len(run.lines), 2, "lines"):
                c.eq([x["tokenSource"] for x in run.lines], ["IdentityProvider"] * 2, "tokenSource")
                c.check(abs(run.lines[0]["expires_on"] - (t0 + 120)) <= 60, "expires_on")
            check_stats(c, emu, token_requests=2, tokens_issued=2)


# ---- App Service -----------------------------------------------------------------------------

def appservice():
    @case
    def appservice_system_assigned(c):
        basic(c, "appservice")

    @case
    def appservice_client_id(c):
        user_assigned(c, "appservice", "--client-id", "5E29463D-71DA-4FE0-8E69-999B57DB23B0", "client_id",
                      "appid")

    @case
    def appservice_object_id(c):
        user_assigned(c, "appservice", "--object-id", "0b2c7a5e-1111-2222-3333-444455556666", "object_id",
                      "oid")

    @case
    def appservice_resource_id(c):
        rid = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
               "Microsoft.ManagedIdentity/userAssignedIdentities/id1")
        user_assigned(c, "appservice", "--resource-id", rid, "mi_res_id", "xms_mirid")

    @case
    def appservice_expires_on_iso(c):
        basic(c, "appservice", "--expires-on-format", "iso")

    @case
    def appservice_retry_fail_2(c):
        return retries(c, "appservice", 2, "--retry-after", 1)

    @case
    def appservice_endpoint_400(c):
        endpoint_400(c, "appservice")

    @case
    def appservice_wrong_secret(c):
        with Emulator("appservice") as emu:
            run = mi_token([RESOURCE], emu.env(IDENTITY_HEADER="not-the-secret"))
            c.eq(run.rc, EXIT_REFUSED, "exit status (%s)" % run.describe())
            c.check("status: 401" in run.stderr, "stderr: %r" % run.stderr)
            c.check("not-the-secret" not in run.stderr, "stderr holds the secret header value")


# ---- Azure ML --------------------------------------------------------------------------------

def azureml():
    @case
    def azureml_system_assigned(c):
        basic(c, "azureml")
        with Emulator("azureml") as emu:
            run = mi_token([RESOURCE], emu.env())
            check_tokens(c, run, emu, "azureml", repeat=1)
            st = emu.stats()
            c.eq((st["last_token_request"] or {}).get("query", {}).get("clientid"), "",
                 "clientid sent empty without DEFAULT_IDENTITY_CLIENT_ID")

    @case
    def azureml_default_client_id(c):
        with Emulator("azureml", "--default-client-id", "dflt-1234") as emu:
            run = mi_token([RESOURCE], emu.env())
            lines = check_tokens(c, run, emu, "azureml", repeat=1)
            st = emu.stats()
            c.eq((st["last_token_request"] or {}).get("query", {}).get("clientid"), "dflt-1234",
                 "clientid = DEFAULT_IDENTITY_CLIENT_ID")
            if lines:
                c.eq(token_payload(lines[0]["accessToken"]).get("appid"), "dflt-1234", "token identity")

    @case
    def azureml_client_id(c):
        user_assigned(c, "azureml", "--client-id", "c0ffee00-0000-0000-0000-000000000001", "clientid",
                      "appid", "--default-client-id", "dflt-1234")

    @case
    def azureml_expires_on_24h(c):
        basic(c, "azureml", "--expires-on-format", "ml-24h")

    @case
    def azureml_expires_on_epoch(c):
        basic(c, "azureml", "--expires-on-format", "epoch")

    @case
    def azureml_object_id_unsupported(c):
        unsupported(c, "azureml", "--object-id")

    @case
    def azureml_endpoint_400(c):
        endpoint_400(c, "azureml")


# ---- Cloud Shell -------------------------------------------------------------------------------

def cloudshell():
    @case
    def cloudshell_system_assigned(c):
        basic(c, "cloudshell")
        with Emulator("cloudshell") as emu:
            run = mi_token([RESOURCE], emu.env())
            check_tokens(c, run, emu, "cloudshell", repeat=1)
            last = emu.stats()["last_token_request"] or {}
            c.eq(last.get("method"), "POST", "method")
            c.eq(last.get("body_params"), {"resource": RESOURCE}, "form body")

    @case
    def cloudshell_client_id_unsupported(c):
        unsupported(c, "cloudshell", "--client-id")

    @case
    def cloudshell_retry_fail_1(c):
        return retries(c, "cloudshell", 1)

    @case
    def cloudshell_endpoint_400(c):
        endpoint_400(c, "cloudshell")


# ---- Azure Arc ---------------------------------------------------------------------------------

def arc_token_dir_ready():
    """The library reads Arc keys only from its platform directory. Create it if we may; returns
    (ok, dirs this run created, to remove afterwards)."""
    if not sys.platform.startswith("linux"):
        return False, []
    created = []
    path = ARC_TOKEN_DIR
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    try:
        for d in reversed(missing):
            os.mkdir(d, 0o755)
            created.append(d)
    except OSError:
        remove_dirs(created)
        return False, []
    if not os.access(ARC_TOKEN_DIR, os.W_OK):
        remove_dirs(created)
        return False, []
    return True, created


def remove_dirs(created):
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            pass


def arc():
    ok, created = arc_token_dir_ready()
    if not ok:
        print("SKIP arc: cannot write the Azure Arc key directory %s (run as root on Linux)" % ARC_TOKEN_DIR)
        RESULTS.skipped += 1
        return
    try:
        d = ("--arc-token-dir", ARC_TOKEN_DIR)

        @case
        def arc_system_assigned(c):
            basic(c, "arc", *d, arc=True)

        @case
        def arc_client_id(c):
            user_assigned(c, "arc", "--client-id", "9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10", "client_id",
                          "appid", *d)

        @case
        def arc_resource_id(c):
            user_assigned(c, "arc", "--resource-id", "/subscriptions/x/resourceGroups/rg/providers/"
                          "Microsoft.ManagedIdentity/userAssignedIdentities/id1", "msi_res_id",
                          "xms_mirid", *d)

        @case
        def arc_user_assigned_not_confirmed(c):
            # An agent that ignores the selector (no echo): fail closed, nothing cached.
            with Emulator("arc", "--no-echo", *d) as emu:
                run = mi_token(["--client-id", "9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10", RESOURCE], emu.env())
                c.eq(run.rc, EXIT_FAILED, "exit status (%s)" % run.describe())
                c.eq(run.stdout, "", "stdout (no token)")
                c.check("code: arc_challenge" in run.stderr, "stderr: %r" % run.stderr)
                c.check("eyJ" not in run.stderr, "stderr looks like it holds a token")

        @case
        def arc_endpoint_400(c):
            endpoint_400(c, "arc", *d)

        @case
        def arc_retry_fail_2(c):
            return retries(c, "arc", 2, *d)
    finally:
        remove_dirs(created)


# ---- Service Fabric ---------------------------------------------------------------------------

def servicefabric():
    try:
        subprocess.run(["openssl", "version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        print("SKIP servicefabric: the openssl command-line tool is missing")
        RESULTS.skipped += 1
        return
    with Emulator("servicefabric") as emu:
        probe = mi_token(["--no-retry", RESOURCE], emu.env())
    if probe.rc != 0 and "code: tls" in probe.stderr and "MI_USE_CURL" in probe.stderr:
        print("SKIP servicefabric: mi-token was built without the libcurl HTTPS transport")
        RESULTS.skipped += 1
        return

    @case
    def servicefabric_system_assigned(c):
        basic(c, "servicefabric")

    @case
    def servicefabric_client_id_unsupported(c):
        unsupported(c, "servicefabric", "--client-id")

    @case
    def servicefabric_claims_token_hash(c):
        with Emulator("servicefabric") as emu:
            run = mi_token(["--claims", "c", "--repeat", 2, RESOURCE], emu.env())
            if c.eq(run.rc, 0, "exit status (%s)" % run.describe()) and c.eq(len(run.lines), 2, "lines"):
                first = run.lines[0]["accessToken"]
                want = hashlib.sha256(first.encode("utf-8")).hexdigest()
                q = (emu.stats()["last_token_request"] or {}).get("query", {})
                c.eq(q.get("token_sha256_to_refresh"), want, "token_sha256_to_refresh")
                c.check("claims" not in q, "the claims text must not be sent")

    @case
    def servicefabric_thumbprint_mismatch(c):
        with Emulator("servicefabric") as emu:
            run = mi_token(["--no-retry", RESOURCE], emu.env(IDENTITY_SERVER_THUMBPRINT="00" * 20))
            c.eq(run.rc, EXIT_TRANSPORT, "exit status (%s)" % run.describe())
            c.check("code: tls" in run.stderr, "stderr: %r" % run.stderr)
            c.eq(emu.stats()["requests"], 0, "HTTP requests that reached the server")
            check_no_secrets(c, run, emu)

    @case
    def servicefabric_endpoint_400(c):
        endpoint_400(c, "servicefabric")


# ---- mi-token's own contract ---------------------------------------------------------------------

def usage():
    env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
    env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = TRAP.url

    def expect_usage(c, args):
        run = mi_token(args, env)
        c.eq(run.rc, 2, "exit status of %r (%s)" % (args, run.describe()))
        c.eq(run.stdout, "", "stdout of %r" % (args,))
        c.check("usage:" in run.stderr, "usage text on stderr for %r: %r" % (args, run.stderr))

    @case
    def usage_errors(c):
        for args in ([], ["--bogus", RESOURCE], ["--client-id", "a", "--object-id", "b", RESOURCE],
                     ["--repeat", "x", RESOURCE], ["--repeat", "0", RESOURCE], ["--repeat", "-1", RESOURCE],
                     ["--timeout-ms", "1.5", RESOURCE], ["--client-id"], ["--verbose"], [RESOURCE, "extra"]):
            expect_usage(c, args)

    @case
    def usage_help(c):
        run = mi_token(["--help"], env)
        c.eq(run.rc, 0, "exit status")
        c.check("usage:" in run.stdout, "usage on stdout: %r" % run.stdout)

    @case
    def source_detection(c):
        run = mi_token(["--source"], env)
        expected = "AzureArc" if os.path.exists(ARC_HIMDS) else "DefaultToIMDS"
        c.eq((run.rc, run.stdout.strip()), (0, expected), "mi-token --source in a clean environment")


# ---- mi-token --cache: the per-user file cache ---------------------------------------------------

CACHE_DIR_NAME = "managed-identity"


class TempDir:
    """A scratch directory for one case (a fake $XDG_RUNTIME_DIR or $TMPDIR), removed after."""

    def __init__(self):
        import tempfile
        self.path = tempfile.mkdtemp(prefix="mi-token-e2e-")
        os.chmod(self.path, 0o700)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        import shutil
        for root, dirs, files in os.walk(self.path):   # a case may have chowned or chmodded things
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
                except (OSError, NotImplementedError):
                    pass
        shutil.rmtree(self.path, ignore_errors=True)


def cache_env(emu, runtime_dir, **more):
    return emu.env(XDG_RUNTIME_DIR=runtime_dir, MI_TOKEN_CACHE=None, **more)


def cache_files(folder):
    """Names in the cache folder, without the lock files."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock"))


def token_files(folder):
    return [n for n in cache_files(folder) if n.endswith(".token")]


def check_cached_pair(c, emu, env, args=(), resource=RESOURCE, requests=1):
    """Two --cache runs: the first from the endpoint, the second from the file."""
    first = mi_token(["--cache"] + list(args) + [resource], env)
    second = mi_token(["--cache"] + list(args) + [resource], env)
    ok = c.eq((first.rc, second.rc), (0, 0), "exit statuses (%s | %s)" % (first.describe(), second.describe()))
    if ok and c.eq((len(first.lines), len(second.lines)), (1, 1), "JSON lines"):
        c.eq(second.lines[0]["tokenSource"], "Cache", "second run's tokenSource")
        c.eq(second.lines[0]["accessToken"], first.lines[0]["accessToken"], "second run's token")
        c.eq(second.lines[0]["expires_on"], first.lines[0]["expires_on"], "second run's expires_on")
        c.eq(second.lines[0]["resource"], first.lines[0]["resource"], "second run's resource")
        check_no_secrets(c, second, emu, [first.lines[0]["accessToken"]])
    check_stats(c, emu, token_requests=requests)
    return first, second


def skip_unless_posix():
    if os.name != "posix" or MI_TOKEN.endswith(".exe") or "wine" in MI_TOKEN:
        return "the file cache is POSIX only"
    return None


def cache():
    if os.path.exists(ARC_HIMDS):
        print("SKIP cache: %s exists, so the environment selects Azure Arc" % ARC_HIMDS)
        RESULTS.skipped += 1
        return

    @case
    def cache_folder_and_file_modes(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds") as emu:
            first, _ = check_cached_pair(c, emu, cache_env(emu, rt))
            if first.lines:
                c.eq(first.lines[0]["tokenSource"], "IdentityProvider", "first run's tokenSource")
            folder = os.path.join(rt, CACHE_DIR_NAME)
            st = os.lstat(folder)
            c.check(os.path.isdir(folder) and not os.path.islink(folder), "cache folder is a directory")
            c.eq(oct(st.st_mode & 0o7777), oct(0o700), "cache folder mode")
            c.eq(st.st_uid, os.geteuid(), "cache folder owner")
            files = cache_files(folder)
            c.eq(len(token_files(folder)), 1, "token files (%r)" % files)
            c.eq(files, token_files(folder), "only token files besides the locks (no temporary left)")
            for name in os.listdir(folder):
                fst = os.lstat(os.path.join(folder, name))
                c.eq(oct(fst.st_mode & 0o7777), oct(0o600), "mode of %s" % name)
                c.eq(fst.st_uid, os.geteuid(), "owner of %s" % name)
            if first.lines:
                tok = first.lines[0]["accessToken"]
                with open(os.path.join(folder, token_files(folder)[0])) as f:
                    c.check(tok in f.read(), "the token file holds the token")

    @case
    def cache_env_variable_opt_in(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds") as emu:
            env = emu.env(XDG_RUNTIME_DIR=rt, MI_TOKEN_CACHE="1")
            a = mi_token([RESOURCE], env)
            b = mi_token([RESOURCE], env)
            if c.eq((a.rc, b.rc), (0, 0), "exit statuses (%s)" % b.describe()):
                c.eq(b.lines[0]["tokenSource"], "Cache", "second run with MI_TOKEN_CACHE=1")
            off = mi_token(["--no-cache", RESOURCE], env)
            if c.eq(off.rc, 0, "exit status of --no-cache (%s)" % off.describe()):
                c.eq(off.lines[0]["tokenSource"], "IdentityProvider", "--no-cache overrides MI_TOKEN_CACHE")
            check_stats(c, emu, token_requests=2)
            plain = mi_token([RESOURCE], emu.env(XDG_RUNTIME_DIR=rt, MI_TOKEN_CACHE=None))
            if c.eq(plain.rc, 0, "exit status (%s)" % plain.describe()):
                c.eq(plain.lines[0]["tokenSource"], "IdentityProvider", "the cache is off by default")

    @case
    def cache_tmpdir_fallback(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as tmp, Emulator("imds") as emu:
            env = emu.env(XDG_RUNTIME_DIR=None, TMPDIR=tmp)
            check_cached_pair(c, emu, env)
            folder = os.path.join(tmp, "%s-%d" % (CACHE_DIR_NAME, os.geteuid()))
            if c.check(os.path.isdir(folder), "per-user folder %s created (have %r)" % (folder, os.listdir(tmp))):
                c.eq(oct(os.lstat(folder).st_mode & 0o7777), oct(0o700), "folder mode")
                c.eq(len(token_files(folder)), 1, "token files")

    def expect_refused(c, emu, env, folder, why):
        """The folder is refused: the token still comes (from the endpoint, each time), a warning
        names the folder, and nothing is written into it."""
        before = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
        a = mi_token(["--cache", RESOURCE], env)
        b = mi_token(["--cache", RESOURCE], env)
        if c.eq((a.rc, b.rc), (0, 0), "exit statuses with a refused folder (%s)" % b.describe()):
            c.eq([a.lines[0]["tokenSource"], b.lines[0]["tokenSource"]], ["IdentityProvider"] * 2,
                 "tokenSource with a refused folder (%s)" % why)
            c.check("not using the cache" in b.stderr, "warning on stderr (%s): %r" % (why, b.stderr))
            check_no_secrets(c, b, emu, [a.lines[0]["accessToken"], b.lines[0]["accessToken"]])
        after = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
        c.eq(after, before, "folder contents after a refusal (%s)" % why)
        return a, b

    @case
    def cache_folder_open_to_others_refused(c):
        if skip_unless_posix():
            return skip_unless_posix()
        for mode in (0o750, 0o705, 0o777, 0o1777):
            with TempDir() as rt, Emulator("imds") as emu:
                folder = os.path.join(rt, CACHE_DIR_NAME)
                os.mkdir(folder)
                os.chmod(folder, mode)
                expect_refused(c, emu, cache_env(emu, rt), folder, "mode %o" % mode)
                c.eq(oct(os.lstat(folder).st_mode & 0o7777), oct(mode), "mode left alone")
                check_stats(c, emu, token_requests=2)

    @case
    def cache_folder_symlink_refused(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, TempDir() as target, Emulator("imds") as emu:
            os.symlink(target, os.path.join(rt, CACHE_DIR_NAME))
            expect_refused(c, emu, cache_env(emu, rt), target, "a symbolic link")
            c.eq(os.listdir(target), [], "nothing written through the link")

    @case
    def cache_folder_other_owner_refused(c):
        if skip_unless_posix():
            return skip_unless_posix()
        if os.geteuid() != 0:
            return "needs root to give a folder to another user"
        with TempDir() as rt, Emulator("imds") as emu:
            folder = os.path.join(rt, CACHE_DIR_NAME)
            os.mkdir(folder, 0o700)
            os.chown(folder, 65534, 65534)
            expect_refused(c, emu, cache_env(emu, rt), folder, "owned by uid 65534")
        with TempDir() as tmp, Emulator("imds") as emu:
            # The shared temporary directory: another user got there first.
            folder = os.path.join(tmp, "%s-%d" % (CACHE_DIR_NAME, os.geteuid()))
            os.mkdir(folder, 0o700)
            os.chown(folder, 65534, 65534)
            expect_refused(c, emu, emu.env(XDG_RUNTIME_DIR=None, TMPDIR=tmp), folder, "TMPDIR, uid 65534")

    @case
    def cache_bad_files_ignored_and_replaced(c):
        if skip_unless_posix():
            return skip_unless_posix()
        other = "https://storage.azure.com"

        def garbage(path):
            with open(path, "wb") as f:
                f.write(os.urandom(3000))

        def truncate(path):
            data = open(path, "rb").read()
            with open(path, "wb") as f:
                f.write(data[:len(data) // 2])

        def empty(path):
            open(path, "wb").close()

        def bad_version(path):
            data = open(path, "rb").read()
            with open(path, "wb") as f:
                f.write(data.replace(b"mi-token-cache 1", b"mi-token-cache 9", 1))

        def huge(path):
            with open(path, "wb") as f:
                f.write(open(path + ".orig", "rb").read() + b"x" * 2000000)

        def nul_in_token(path):
            data = open(path, "rb").read()
            with open(path, "wb") as f:
                f.write(data.replace(b"access_token ", b"access_token \x00", 1))

        def open_mode(path):
            os.chmod(path, 0o644)

        def foreign_owner(path):
            if os.geteuid() == 0:
                os.chown(path, 65534, 65534)
            else:
                os.chmod(path, 0o640)

        def symlink(path):
            os.rename(path, path + ".elsewhere")
            os.symlink(path + ".elsewhere", path)

        def hardlink(path):
            os.link(path, path + ".second-link")

        def other_key(path):
            # Another key's file (same user) under this key's name: never served for this key.
            folder = os.path.dirname(path)
            others = [n for n in token_files(folder) if os.path.join(folder, n) != path]
            data = open(os.path.join(folder, others[0]), "rb").read()
            with open(path, "wb") as f:
                f.write(data)

        def a_directory(path):
            os.unlink(path)
            os.mkdir(path, 0o700)

        for name, spoil in (("garbage", garbage), ("truncated", truncate), ("empty", empty),
                            ("unknown version", bad_version), ("2 MB", huge), ("NUL in the token", nul_in_token),
                            ("mode 0644", open_mode), ("another owner", foreign_owner), ("symbolic link", symlink),
                            ("second hard link", hardlink), ("another key's file", other_key),
                            ("a directory", a_directory)):
            with TempDir() as rt, Emulator("imds") as emu:
                env = cache_env(emu, rt)
                folder = os.path.join(rt, CACHE_DIR_NAME)
                seed_other = mi_token(["--cache", other], env)
                before_files = set(token_files(folder))
                first = mi_token(["--cache", RESOURCE], env)
                if not c.eq((seed_other.rc, first.rc), (0, 0), "%s: seeding runs (%s)" % (name, first.describe())):
                    continue
                mine = [n for n in token_files(folder) if n not in before_files]
                if not c.eq(len(mine), 1, "%s: the new key's file" % name):
                    continue
                path = os.path.join(folder, mine[0])
                import shutil
                shutil.copyfile(path, path + ".orig")
                spoil(path)
                os.unlink(path + ".orig")
                again = mi_token(["--cache", RESOURCE], env)
                if c.eq(again.rc, 0, "%s: exit status (%s)" % (name, again.describe())):
                    c.eq(again.lines[0]["tokenSource"], "IdentityProvider", "%s: file ignored" % name)
                    c.eq(token_payload(again.lines[0]["accessToken"]).get("aud"), RESOURCE, "%s: audience" % name)
                    c.check(again.lines[0]["accessToken"] != first.lines[0]["accessToken"], "%s: new token" % name)
                    check_no_secrets(c, again, emu, [first.lines[0]["accessToken"], again.lines[0]["accessToken"]])
                # Replaced: the next run is served from a sound file.
                third = mi_token(["--cache", RESOURCE], env)
                if c.eq(third.rc, 0, "%s: third run (%s)" % (name, third.describe())) and again.lines:
                    c.eq(third.lines[0]["tokenSource"], "Cache", "%s: replaced file used" % name)
                    c.eq(third.lines[0]["accessToken"], again.lines[0]["accessToken"], "%s: replaced token" % name)
                if not os.path.isdir(path):
                    fst = os.lstat(path)
                    c.check(not os.path.islink(path), "%s: the link itself is replaced" % name)
                    c.eq((oct(fst.st_mode & 0o7777), fst.st_uid, fst.st_nlink), (oct(0o600), os.geteuid(), 1),
                         "%s: mode, owner and links of the replacement" % name)
                check_stats(c, emu, token_requests=3)

    @case
    def cache_key_rules(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds") as emu:
            env = cache_env(emu, rt)
            runs = [mi_token(["--cache"] + a, env) for a in (
                [RESOURCE],
                [RESOURCE.upper()],                             # resource: case-insensitive
                [RESOURCE + "/.default"],                       # the library's /.default trim
                ["--client-id", "abc", RESOURCE],               # another identity
                ["--client-id", "ABC", RESOURCE],               # ID value: case-insensitive
                ["--object-id", "abc", RESOURCE],               # same text, another kind
                ["https://storage.azure.com"])]                 # another resource
            if c.eq([r.rc for r in runs], [0] * len(runs), "exit statuses (%s)" % runs[-1].describe()):
                c.eq([r.lines[0]["tokenSource"] for r in runs],
                     ["IdentityProvider", "Cache", "Cache", "IdentityProvider", "Cache", "IdentityProvider",
                      "IdentityProvider"], "tokenSource per key")
                c.eq(token_payload(runs[5].lines[0]["accessToken"]).get("oid"), "abc", "object ID token")
            check_stats(c, emu, token_requests=4)
            c.eq(len(token_files(os.path.join(rt, CACHE_DIR_NAME))), 4, "one file per key")

    @case
    def cache_five_minute_rule(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds", "--lifetime", 240) as emu:
            env = cache_env(emu, rt)
            runs = [mi_token(["--cache", RESOURCE], env) for _ in range(2)]
            if c.eq([r.rc for r in runs], [0, 0], "exit statuses"):
                c.eq([r.lines[0]["tokenSource"] for r in runs], ["IdentityProvider"] * 2,
                     "a token expiring within 5 minutes is not served from the file")
            check_stats(c, emu, token_requests=2)
        with TempDir() as rt, Emulator("imds") as emu:
            # A file whose token has come within 5 minutes of its expiry is not used.
            env = cache_env(emu, rt)
            first = mi_token(["--cache", RESOURCE], env)
            folder = os.path.join(rt, CACHE_DIR_NAME)
            path = os.path.join(folder, token_files(folder)[0])
            text = open(path).read()
            soon = int(time.time()) + 280
            text = re.sub(r"(?m)^expires_on \d+$", "expires_on %d" % soon, text)
            text = re.sub(r"(?m)^refresh_on \d+$", "refresh_on 0", text)
            with open(path, "w") as f:
                f.write(text)
            again = mi_token(["--cache", RESOURCE], env)
            if c.eq((first.rc, again.rc), (0, 0), "exit statuses (%s)" % again.describe()):
                c.eq(again.lines[0]["tokenSource"], "IdentityProvider", "tokenSource of a nearly expired file")
            check_stats(c, emu, token_requests=2)

    @case
    def cache_claims_bypass(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds") as emu:
            env = cache_env(emu, rt)
            first = mi_token(["--cache", RESOURCE], env)
            claims = mi_token(["--cache", "--claims", '{"access_token":{"nbf":{"essential":true}}}', RESOURCE], env)
            after = mi_token(["--cache", RESOURCE], env)
            if c.eq([first.rc, claims.rc, after.rc], [0, 0, 0], "exit statuses (%s)" % claims.describe()):
                c.eq(claims.lines[0]["tokenSource"], "IdentityProvider", "claims never read the file")
                c.check(claims.lines[0]["accessToken"] != first.lines[0]["accessToken"], "claims got a new token")
                c.eq(after.lines[0]["tokenSource"], "Cache", "after claims")
                c.eq(after.lines[0]["accessToken"], claims.lines[0]["accessToken"],
                     "the token fetched with claims replaces the rejected one")
            check_stats(c, emu, token_requests=2)

    @case
    def cache_concurrent_cold_calls_coalesce(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds", "--delay-ms", 300) as emu:
            env = cache_env(emu, rt)
            procs = [subprocess.Popen([MI_TOKEN, "--cache", RESOURCE], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(50)]
            outs = [p.communicate(timeout=120) for p in procs]
            rcs = [p.returncode for p in procs]
            c.eq(rcs, [0] * 50, "exit statuses (stderr: %r)" % [e for _, e in outs if e][:2])
            tokens = set()
            sources = []
            for out, _ in outs:
                try:
                    line = json.loads(out)
                    tokens.add(line["accessToken"])
                    sources.append(line["tokenSource"])
                except ValueError:
                    c.check(False, "not JSON: %r" % out[:200])
            c.eq(len(tokens), 1, "distinct tokens among 50 concurrent processes")
            c.eq(sources.count("IdentityProvider"), 1, "processes that made the request")
            check_stats(c, emu, token_requests=1)

    @case
    def cache_concurrent_failure_shared(c):
        # The endpoint refuses (400, final): the processes that waited for the one request get
        # its outcome instead of asking one after another; a later call asks again.
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds", "--fail", 1000, "--fail-status", 400, "--delay-ms", 500) as emu:
            env = cache_env(emu, rt)
            procs = [subprocess.Popen([MI_TOKEN, "--cache", RESOURCE], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(20)]
            outs = [p.communicate(timeout=120) for p in procs]
            c.eq([p.returncode for p in procs], [EXIT_REFUSED] * 20, "exit statuses")
            c.eq([o for o, _ in outs], [""] * 20, "stdout")
            c.check(all("status: 400" in e and "code: http_status" in e for _, e in outs),
                    "every process reports the endpoint's answer: %r" % [e for _, e in outs][:2])
            check_stats(c, emu, token_requests=1)
            later = mi_token(["--cache", RESOURCE], env)
            c.eq(later.rc, EXIT_REFUSED, "exit status of a later call")
            check_stats(c, emu, token_requests=2)

    @case
    def cache_sequential_calls_one_request(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds") as emu:
            env = cache_env(emu, rt)
            runs = [mi_token(["--cache", "--output", "token", RESOURCE], env) for _ in range(20)]
            c.eq([r.rc for r in runs], [0] * 20, "exit statuses")
            c.eq(len({r.stdout for r in runs}), 1, "one token for 20 runs")
            check_stats(c, emu, token_requests=1)

    @case
    def cache_proactive_refresh(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds", "--refresh-in", 3) as emu:
            env = cache_env(emu, rt)
            first = mi_token(["--cache", RESOURCE], env)
            hit = mi_token(["--cache", RESOURCE], env)
            time.sleep(3.3)
            refreshed = mi_token(["--cache", RESOURCE], env)
            after = mi_token(["--cache", RESOURCE], env)
            runs = [first, hit, refreshed, after]
            if c.eq([r.rc for r in runs], [0] * 4, "exit statuses (%s)" % refreshed.describe()):
                c.eq([r.lines[0]["tokenSource"] for r in runs],
                     ["IdentityProvider", "Cache", "IdentityProvider", "Cache"], "tokenSource")
                c.check(refreshed.lines[0]["accessToken"] != first.lines[0]["accessToken"], "refresh got a new token")
                c.eq(after.lines[0]["accessToken"], refreshed.lines[0]["accessToken"], "refreshed token stored")
            check_stats(c, emu, token_requests=2)

    @case
    def cache_refresh_failure_keeps_token(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt:
            with Emulator("imds", "--refresh-in", 2) as emu:
                env = cache_env(emu, rt)
                first = mi_token(["--cache", RESOURCE], env)
            # The endpoint is gone: a counting listener that closes every connection stands in.
            trap = Trap()
            try:
                env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = trap.url
                time.sleep(2.3)
                failed = mi_token(["--cache", RESOURCE], env)
                attempts = trap.connections
                cooled = mi_token(["--cache", RESOURCE], env)
                runs = [first, failed, cooled]
                if c.eq([r.rc for r in runs], [0] * 3, "exit statuses (%s)" % failed.describe()):
                    c.eq([r.lines[0]["tokenSource"] for r in runs[1:]], ["Cache", "Cache"],
                         "the still valid token is served when the refresh fails")
                    c.eq(failed.lines[0]["accessToken"], first.lines[0]["accessToken"], "token kept")
                    check_no_secrets(c, failed, emu, [first.lines[0]["accessToken"]])
                c.eq(attempts, 1, "one refresh attempt (no retries)")
                c.eq(trap.connections, 1, "no attempt during the cool-down")
            finally:
                trap.close()

    @case
    def cache_never_prints_token_on_stderr(c):
        if skip_unless_posix():
            return skip_unless_posix()
        with TempDir() as rt, Emulator("imds") as emu:
            env = cache_env(emu, rt)
            a = mi_token(["--cache", "--verbose", RESOURCE], env)
            b = mi_token(["--cache", "--verbose", RESOURCE], env)
            if c.eq((a.rc, b.rc), (0, 0), "exit statuses"):
                for r in (a, b):
                    check_no_secrets(c, r, emu, [a.lines[0]["accessToken"]])
                    c.check("eyJ" not in r.stderr, "stderr looks like it holds a token: %r" % r.stderr)


# ---- mi-token for people: --output, --decode, --help, exit statuses -------------------------------

def people():
    if os.path.exists(ARC_HIMDS):
        print("SKIP people: %s exists, so the environment selects Azure Arc" % ARC_HIMDS)
        RESULTS.skipped += 1
        return

    @case
    def output_forms(c):
        with Emulator("imds") as emu:
            env = emu.env()
            js = mi_token(["--output", "json", RESOURCE], env)
            tok = mi_token(["--output", "token", RESOURCE], env)
            hdr = mi_token(["--output=header", RESOURCE], env)
            exp = mi_token(["--output", "env", RESOURCE], env)
            if not c.eq([r.rc for r in (js, tok, hdr, exp)], [0] * 4, "exit statuses (%s)" % exp.describe()):
                return
            # Each run is a new process with its own token: check the form, and the audience.
            jwt = r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
            c.check(re.fullmatch(jwt + "\n", tok.stdout), "--output token: the bare token and a newline: %r"
                    % tok.stdout[:40])
            c.eq(token_payload(tok.stdout.strip()).get("aud"), RESOURCE, "--output token: audience")
            c.check(re.fullmatch("Authorization: Bearer " + jwt + "\n", hdr.stdout), "--output header: %r"
                    % hdr.stdout[:40])
            c.eq(token_payload(hdr.stdout.split()[-1]).get("aud"), RESOURCE, "--output header: audience")
            c.check(js.lines[0]["accessToken"] not in tok.stdout + hdr.stdout, "four runs, four tokens")
            lines = exp.stdout.splitlines()
            c.check(all(l.startswith("export ") for l in lines), "--output env: export lines: %r" % lines[:1])
            sh = subprocess.run(["sh", "-c", exp.stdout + 'printf "%s|%s|%s|%s" "$MI_ACCESS_TOKEN" '
                                 '"$MI_TOKEN_TYPE" "$MI_EXPIRES_ON" "$MI_RESOURCE"'],
                                capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")})
            parts = sh.stdout.split("|")
            if c.eq(len(parts), 4, "sh read the export lines: %r" % sh.stderr):
                c.eq(token_payload(parts[0]).get("aud"), RESOURCE, "MI_ACCESS_TOKEN")
                c.eq(parts[1], "Bearer", "MI_TOKEN_TYPE")
                c.check(parts[2].isdigit(), "MI_EXPIRES_ON is epoch seconds: %r" % parts[2])
                c.eq(parts[3], RESOURCE, "MI_RESOURCE")
            rep = mi_token(["--output", "token", "--repeat", 2, RESOURCE], env)
            c.eq(len(rep.stdout.splitlines()), 2, "--repeat 2 --output token: two lines")

    @case
    def output_env_quotes_resource(c):
        with Emulator("imds") as emu:
            weird = "https://example.com/it's $(touch /nonexistent-mi)"
            exp = mi_token(["--output", "env", weird], emu.env())
            if c.eq(exp.rc, 0, "exit status (%s)" % exp.describe()):
                sh = subprocess.run(["sh", "-c", exp.stdout + 'printf "%s" "$MI_RESOURCE"'], capture_output=True,
                                    text=True, env={"PATH": os.environ.get("PATH", "")})
                c.eq(sh.stdout, weird, "resource survives the shell quoting")

    @case
    def decode(c):
        with Emulator("imds") as emu:
            run = mi_token(["--decode", "--client-id", "c0ffee", RESOURCE], emu.env())
            if not c.eq(run.rc, 0, "exit status (%s)" % run.describe()):
                return
            c.eq(len(run.lines), 1, "one JSON object")
            out = run.lines[0] if run.lines else {}
            c.eq(out.get("verified"), False, "marked as not verified")
            c.check("not verified" in out.get("note", ""), "note says not verified: %r" % out.get("note"))
            c.eq(out.get("header", {}).get("alg"), "RS256", "header alg")
            claims = out.get("claims", {})
            c.eq(claims.get("aud"), RESOURCE, "aud")
            c.eq(claims.get("iss"), "https://sts.windows.net/mi-emulator/", "iss")
            c.eq(claims.get("appid"), "c0ffee", "appid")
            c.check(isinstance(claims.get("exp"), int) and isinstance(claims.get("iat"), int), "exp and iat")
            c.check("jti" not in claims and "n" not in claims, "only the listed claims: %r" % sorted(claims))
            c.eq(out.get("tokenSource"), "IdentityProvider", "tokenSource")
            st = emu.stats()
            c.eq(st["token_requests"], 1, "requests")
            raw = mi_token(["--output", "token", RESOURCE], emu.env())
            if raw.rc == 0:
                sig = raw.stdout.strip().split(".")[-1]
                c.check(sig not in run.stdout, "the signature is not printed")

    @case
    def help_lists_everything(c):
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        run = mi_token(["--help"], env)
        c.eq(run.rc, 0, "exit status")
        for word in ("--client-id", "--object-id", "--resource-id", "--claims", "--repeat", "--timeout-ms",
                     "--no-retry", "--verbose", "--source", "--probe", "--output", "--decode", "--cache", "--no-cache",
                     "--help", "MI_TOKEN_CACHE", "XDG_RUNTIME_DIR", "TMPDIR", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                     "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
            c.check(word in run.stdout, "--help mentions %s" % word)
        for code in range(6):
            c.check(re.search(r"(?m)^\s+%d\s" % code, run.stdout), "--help lists exit status %d" % code)

    @case
    def exit_no_endpoint(c):
        # A loopback port nobody listens on: connection refused, nothing answered.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:%d" % port
        run = mi_token(["--no-retry", RESOURCE], env)
        c.eq(run.rc, EXIT_NO_ENDPOINT, "exit status (%s)" % run.describe())
        c.eq(run.stdout, "", "stdout")

    @case
    def exit_refused(c):
        with Emulator("imds", "--fail", 10, "--fail-status", 403) as emu:
            run = mi_token(["--no-retry", RESOURCE], emu.env())
            c.eq(run.rc, EXIT_REFUSED, "exit status (%s)" % run.describe())

    @case
    def exit_transport(c):
        # Something that is not a token endpoint answers: a success without a token.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]

        def serve():
            try:
                conn, _ = srv.accept()
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\n{}")
                conn.close()
            except OSError:
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:%d" % port
        run = mi_token(["--no-retry", RESOURCE], env)
        srv.close()
        c.eq(run.rc, EXIT_TRANSPORT, "exit status (%s)" % run.describe())
        c.check("code: invalid_response" in run.stderr, "stderr: %r" % run.stderr)

    @case
    def usage_errors_new_options(c):
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = TRAP.url
        for args in (["--output", "xml", RESOURCE], ["--output"], ["--decode=yes", RESOURCE],
                     ["--cache=1", RESOURCE], ["--decode", "--output", "token", RESOURCE]):
            run = mi_token(args, env)
            c.eq(run.rc, EXIT_USAGE, "exit status of %r (%s)" % (args, run.describe()))
            c.eq(run.stdout, "", "stdout of %r" % (args,))


# ---- mi-token --probe (docs/protocol.md §11) --------------------------------------------------------

def probe():
    def closed_port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    @case
    def probe_imds_present(c):
        if os.path.exists(ARC_HIMDS):
            return "%s exists, so the environment selects Azure Arc" % ARC_HIMDS
        with Emulator("imds") as emu:
            run = mi_token(["--probe"], emu.env())
            c.eq((run.rc, run.stdout), (EXIT_OK, "DefaultToIMDS\n"), "exit status and stdout (%s)" % run.describe())
            # One GET to the token path that asks for nothing: no query, no Metadata header, so the
            # emulator refuses it (400) and issues no token.
            st = check_stats(c, emu, token_requests=1, tokens_issued=0)
            last = st.get("last_token_request") or {}
            c.eq(last.get("method"), "GET", "method")
            c.eq(last.get("query"), {}, "query")
            c.check("metadata" not in last.get("header_names", []), "no Metadata header: %r"
                    % last.get("header_names"))

    @case
    def probe_env_source_no_request(c):
        # A source the environment configures is answered from the variables alone.
        with Emulator("appservice") as emu:
            run = mi_token(["--probe"], emu.env())
            c.eq((run.rc, run.stdout), (EXIT_OK, "AppService\n"), "exit status and stdout (%s)" % run.describe())
            check_stats(c, emu, requests=0, token_requests=0)

    @case
    def probe_absent_closed_port(c):
        if os.path.exists(ARC_HIMDS):
            return "%s exists, so the environment selects Azure Arc" % ARC_HIMDS
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:%d" % closed_port()
        run = mi_token(["--probe"], env)
        c.eq(run.rc, EXIT_NO_ENDPOINT, "exit status (%s)" % run.describe())
        c.eq(run.stdout, "", "stdout")
        c.check("no managed identity endpoint answered" in run.stderr, "stderr: %r" % run.stderr)
        c.check("code: network" in run.stderr, "stderr: %r" % run.stderr)
        c.check(run.elapsed < 10.0, "took %.1f s: a probe does not retry" % run.elapsed)

    @case
    def probe_fallback_example(c):
        # examples/probe_fallback, built next to mi-token: the managed identity when the probe
        # finds an endpoint, else the (printed, never run) developer credential, exit 0 both ways.
        exe_dir, exe_name = os.path.split(MI_TOKEN)
        path = os.path.join(exe_dir, "probe_fallback" + os.path.splitext(exe_name)[1])
        if not os.path.exists(path):
            return "probe_fallback is not built next to mi-token"
        if os.path.exists(ARC_HIMDS):
            return "%s exists, so the environment selects Azure Arc" % ARC_HIMDS
        with Emulator("imds") as emu:
            proc = subprocess.run([path], env=emu.env(), capture_output=True, text=True, timeout=60)
            c.eq(proc.returncode, 0, "present: exit status (stderr %r)" % proc.stderr)
            c.check("managed identity endpoint found (DefaultToIMDS)" in proc.stdout, "present: %r" % proc.stdout)
            c.check(re.search(r"token of \d+ characters", proc.stdout), "present: a token: %r" % proc.stdout)
            c.check("eyJ" not in proc.stdout + proc.stderr, "the example printed the token")
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:%d" % closed_port()
        proc = subprocess.run([path], env=env, capture_output=True, text=True, timeout=60)
        c.eq(proc.returncode, 0, "absent: exit status (stderr %r)" % proc.stderr)
        c.check("az account get-access-token --resource https://vault.azure.net" in proc.stdout,
                "absent: the fallback: %r" % proc.stdout)

    @case
    def probe_usage(c):
        env = {k: os.environ[k] for k in KEEP_VARS if k in os.environ}
        env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = TRAP.url
        for args in (["--probe=1"], ["--probe", "--source"]):
            run = mi_token(args, env)
            c.eq(run.rc, EXIT_USAGE, "exit status of %r (%s)" % (args, run.describe()))
            c.eq(run.stdout, "", "stdout of %r" % (args,))


# ---- AKS workload identity ----------------------------------------------------------------------

WORKLOAD_LIFETIME = 3599


def workload():
    try:
        subprocess.run(["openssl", "version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        print("SKIP workload: the openssl command-line tool is missing")
        RESULTS.skipped += 1
        return
    with Emulator("workload") as emu:
        probe = mi_token(["--no-retry", RESOURCE], emu.env())
    if probe.rc != 0 and "code: tls" in probe.stderr and "MI_USE_CURL" in probe.stderr:
        print("SKIP workload: mi-token was built without the libcurl HTTPS transport")
        RESULTS.skipped += 1
        return

    def ca_args(emu):
        return ["--ca-file", emu.exports["MI_EMULATOR_CA_FILE"]]

    @case
    def workload_system_assigned(c):
        with Emulator("workload") as emu:
            t0 = time.time()
            run = mi_token(ca_args(emu) + ["--repeat", 2, "--verbose", RESOURCE + "/.default"], emu.env())
            check_tokens(c, run, emu, "workload", t0=t0, lifetime=WORKLOAD_LIFETIME)
            st = check_stats(c, emu, token_requests=1, tokens_issued=1)
            last = st.get("last_token_request") or {}
            c.eq(last.get("tenant"), emu.exports["AZURE_TENANT_ID"], "tenant in the path")
            params = last.get("body_params") or {}
            c.eq(params.get("client_id"), emu.exports["AZURE_CLIENT_ID"], "client_id")
            c.eq(params.get("scope"), RESOURCE + "/.default", "scope")
            headers = last.get("headers") or {}
            c.eq(headers.get("return-client-request-id"), "true", "return-client-request-id")
            c.eq(headers.get("x-client-sku"), "managed-identity-cpp", "x-client-SKU")
            c.eq((last.get("assertion") or {}).get("jti"), (st.get("current_assertion") or {}).get("jti"),
                 "the assertion sent is the token file's")
            src = mi_token(["--source"], emu.env())
            c.eq((src.rc, src.stdout.strip()), (0, "WorkloadIdentity"), "mi-token --source")

    @case
    def workload_untrusted_without_ca_file(c):
        with Emulator("workload") as emu:
            run = mi_token(["--no-retry", RESOURCE], emu.env())
            c.eq(run.rc, EXIT_TRANSPORT, "exit status (%s)" % run.describe())
            c.check("code: tls" in run.stderr, "stderr: %r" % run.stderr)
            c.eq(emu.stats()["token_requests"], 0, "token requests that reached the emulator")
            check_no_secrets(c, run, emu)

    @case
    def workload_object_id_unsupported(c):
        with Emulator("workload") as emu:
            run = mi_token(ca_args(emu) + ["--object-id", "some-id", RESOURCE], emu.env())
            c.eq(run.rc, EXIT_FAILED, "exit status (%s)" % run.describe())
            c.check("code: unsupported_identity" in run.stderr, "stderr: %r" % run.stderr)
            c.eq(emu.stats()["requests"], 0, "emulator requests")

    @case
    def workload_no_client_id(c):
        with Emulator("workload") as emu:
            run = mi_token(ca_args(emu) + [RESOURCE], emu.env(AZURE_CLIENT_ID=None))
            c.eq(run.rc, EXIT_FAILED, "exit status (%s)" % run.describe())
            c.check("AZURE_CLIENT_ID" in run.stderr and "code: invalid_argument" in run.stderr,
                    "stderr: %r" % run.stderr)

    def aadsts(c, code, hint, *emu_args, mi_args=()):
        with Emulator("workload", *emu_args) as emu:
            run = mi_token(ca_args(emu) + list(mi_args) + [RESOURCE], emu.env())
            c.eq(run.rc, EXIT_REFUSED, "exit status (%s)" % run.describe())
            c.check("AADSTS%s" % code in run.stderr, "stderr names AADSTS%s: %r" % (code, run.stderr))
            c.check(hint in run.stderr, "stderr says what to fix (%r): %r" % (hint, run.stderr))
            c.check("correlation id: " in run.stderr, "stderr has a correlation id")
            check_no_secrets(c, run, emu)
            check_stats(c, emu, token_requests=1, tokens_issued=0)

    @case
    def workload_aadsts70021_wrong_issuer(c):
        aadsts(c, "70021", "federated identity credential", "--wrong-issuer")

    @case
    def workload_aadsts700016_wrong_client(c):
        aadsts(c, "700016", "not an application in this tenant", "--wrong-client-id")

    @case
    def workload_aadsts700016_client_id_option(c):
        # --client-id overrides AZURE_CLIENT_ID: here with an ID the emulator does not know.
        aadsts(c, "700016", "not an application", mi_args=("--client-id", "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"))

    @case
    def workload_aadsts700024_expired(c):
        aadsts(c, "700024", "has expired", "--expired-assertion")

    @case
    def workload_aadsts90002_wrong_tenant(c):
        aadsts(c, "90002", "no such tenant", "--wrong-tenant")

    @case
    def workload_rotated_token_file(c):
        with Emulator("workload") as emu:
            first = mi_token(ca_args(emu) + [RESOURCE], emu.env())
            jti1 = ((emu.stats().get("last_token_request") or {}).get("assertion") or {}).get("jti")
            rotated = emu.control("POST", "/__emulator/rotate")
            second = mi_token(ca_args(emu) + [RESOURCE], emu.env())
            jti2 = ((emu.stats().get("last_token_request") or {}).get("assertion") or {}).get("jti")
            c.eq((first.rc, second.rc), (0, 0), "exit statuses (%s / %s)" % (first.describe(), second.describe()))
            c.check(jti1 and jti1 != jti2, "the second request sent the rotated token (%r, %r)" % (jti1, jti2))
            c.eq(jti2, (rotated.get("current_assertion") or {}).get("jti"), "the jti of the new token file")

    @case
    def workload_retry_fail_1(c):
        with Emulator("workload", "--fail", 1, "--fail-status", 503) as emu:
            run = mi_token(ca_args(emu) + [RESOURCE], emu.env())
            c.eq(run.rc, 0, "exit status (%s)" % run.describe())
            check_stats(c, emu, token_requests=2, tokens_issued=1, failures=1)

    @case
    def workload_claims(c):
        with Emulator("workload") as emu:
            claims = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
            run = mi_token(ca_args(emu) + ["--claims", claims, RESOURCE], emu.env())
            c.eq(run.rc, 0, "exit status (%s)" % run.describe())
            params = (emu.stats().get("last_token_request") or {}).get("body_params") or {}
            c.eq(params.get("claims"), claims, "claims field")

    @case
    def workload_https_proxy_and_no_proxy(c):
        with Emulator("workload") as emu:
            closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            closed.bind(("127.0.0.1", 0))
            dead = "http://127.0.0.1:%d" % closed.getsockname()[1]  # a proxy nothing listens on
            closed.close()
            via = mi_token(ca_args(emu) + ["--no-retry", RESOURCE], emu.env(HTTPS_PROXY=dead))
            c.eq(via.rc, EXIT_NO_ENDPOINT, "through a dead HTTPS_PROXY (%s)" % via.describe())
            c.eq(emu.stats()["token_requests"], 0, "token requests past the dead proxy")
            bypass = mi_token(ca_args(emu) + ["--no-retry", RESOURCE],
                              emu.env(HTTPS_PROXY=dead, NO_PROXY="127.0.0.1"))
            c.eq(bypass.rc, 0, "NO_PROXY bypasses it (%s)" % bypass.describe())

    for proxy_args in ([], ["--proxy-ca-data"]):
        def workload_token_proxy(c, proxy_args=proxy_args):
            with Emulator("workload", "--token-proxy", "--proxy-path", "/tokenproxy", *proxy_args) as emu:
                t0 = time.time()
                run = mi_token(["--repeat", 2, RESOURCE], emu.env())
                check_tokens(c, run, emu, "workload", t0=t0, lifetime=WORKLOAD_LIFETIME)
                st = check_stats(c, emu, token_requests=1, tokens_issued=1)
                c.eq(st.get("tls_sni_rejected"), 0, "handshakes refused for their SNI")
        workload_token_proxy.__name__ = "workload_token_proxy" + ("_ca_data" if proxy_args else "_ca_file")
        case(workload_token_proxy)


SOURCES = [imds, appservice, azureml, cloudshell, arc, servicefabric, workload, cache, people, probe]


def main(argv):
    global MI_TOKEN, TRAP
    if len(argv) < 2:
        sys.stderr.write("usage: e2e_mi_token.py PATH/TO/mi-token [CASE_SUBSTRING...]\n")
        return 2
    MI_TOKEN = os.path.abspath(argv[1])
    FILTERS.extend(argv[2:])
    TRAP = Trap()
    try:
        usage()
        for source in SOURCES:
            source()
        # No run may have fallen back to IMDS.
        if TRAP.connections:
            RESULTS.failed += 1
            print("FAIL imds_fallback_trap: %d connection(s) reached the IMDS trap" % TRAP.connections)
    finally:
        TRAP.close()
    if RESULTS.skipped:
        print("(%d skipped)" % RESULTS.skipped)
    print("%d passed, %d failed" % (RESULTS.passed, RESULTS.failed))
    return 1 if RESULTS.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
