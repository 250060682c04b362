#!/usr/bin/env python3
"""Tests of tools/mi_emulator.py --source workload (Entra ID's token endpoint for AKS workload
identity, and the AKS identity binding token proxy). Needs no C++: plain python3 and the openssl
command-line tool the emulator uses to make its certificates.

    python3 tests/test_emulator_workload.py [CASE_SUBSTRING...]

Each case starts its own emulator on 127.0.0.1 (port 0) and talks to it with Python's ssl,
http.client and urllib, trusting only the CA the emulator exported. Nothing leaves the loopback
interface: no proxy variables are used and no real Entra host is named in a request.

Prints `N passed, M failed` last; exits 1 if anything failed, 77 (skipped) without openssl.
"""
import base64
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EMULATOR = os.path.join(ROOT, "tools", "mi_emulator.py")
AUDIENCE = "api://AzureADTokenExchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RESOURCE = "https://vault.azure.net"
GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z$")
REQUEST_ID = "0b5e1f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
WAIT = 60.0   # generous bound for anything that should take well under a second


# ---- bookkeeping ----------------------------------------------------------------

class Case:
    """One test case: checks that pass or fail together."""

    def __init__(self, name):
        self.name = name
        self.errors = []

    def check(self, cond, what):
        if not cond:
            self.errors.append(what)
        return bool(cond)

    def eq(self, actual, expected, what):
        return self.check(actual == expected, "%s: got %r, expected %r" % (what, actual, expected))


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


# ---- the emulator -----------------------------------------------------------------

class Emulator:
    """Runs the emulator; `env` holds its exports."""

    def __init__(self, *args):
        self.args = ["--source", "workload"] + [str(a) for a in args]
        self.proc = None
        self.env = {}
        self.exit_code = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, EMULATOR] + self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        lines = []
        done = threading.Event()

        def read():
            for line in self.proc.stdout:
                if line.strip() == "READY":
                    break
                lines.append(line)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(WAIT) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("emulator did not start: %s" % self.proc.stderr.read()[-2000:])
        words = shlex.split("".join(lines))
        for i, w in enumerate(words):
            if w == "export" and i + 1 < len(words):
                k, _, v = words[i + 1].partition("=")
                self.env[k] = v
        authority = self.env["AZURE_AUTHORITY_HOST"]
        self.port = int(urllib.parse.urlsplit(authority).port)
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc and self.exit_code is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait()
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
        return self.exit_code

    # -- talking to it --

    def context(self, cafile=None, cadata=None):
        if cafile is None and cadata is None:
            cafile = self.env.get("MI_EMULATOR_CA_FILE") or self.env.get("AZURE_KUBERNETES_CA_FILE")
            cadata = None if cafile else self.env.get("AZURE_KUBERNETES_CA_DATA")
        return ssl.create_default_context(cafile=cafile, cadata=cadata)

    def request(self, method, path, body=None, headers=None, server_name=None, context=None):
        """One request on a fresh TLS connection; returns (status, headers, parsed JSON or text).
        `server_name` is the name sent as SNI and checked against the certificate (default:
        AZURE_KUBERNETES_SNI_NAME when exported, else 127.0.0.1, which sends no SNI)."""
        if server_name is None:
            server_name = self.env.get("AZURE_KUBERNETES_SNI_NAME", "127.0.0.1")
        ctx = context or self.context()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        try:
            tls = ctx.wrap_socket(sock, server_hostname=server_name)
        except BaseException:
            sock.close()
            raise
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        conn.sock = tls
        try:
            hdrs = {"Host": "127.0.0.1:%d" % self.port}
            hdrs.update(headers or {})
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read().decode("utf-8", "replace")
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data
            return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
        finally:
            conn.close()

    def stats(self):
        return self.request("GET", "/__emulator/stats")[2]

    def rotate(self, mistake=None):
        path = "/__emulator/rotate" + ("?mistake=" + mistake if mistake else "")
        return self.request("POST", path)[2]

    def token_path(self, tenant=None):
        prefix = urllib.parse.urlsplit(self.env.get("AZURE_KUBERNETES_TOKEN_PROXY", "")).path.rstrip("/")
        return "%s/%s/oauth2/v2.0/token" % (prefix, tenant or self.env["AZURE_TENANT_ID"])

    def assertion(self):
        with open(self.env["AZURE_FEDERATED_TOKEN_FILE"]) as f:
            return f.read().strip(" \t\r\n")

    def form(self, **changes):
        """The request a workload identity client makes from the exports, with `changes`
        (a value of None drops the field; a list sends the field once per item)."""
        fields = {"grant_type": "client_credentials", "client_id": self.env["AZURE_CLIENT_ID"],
                  "scope": RESOURCE + "/.default", "client_assertion_type": ASSERTION_TYPE,
                  "client_assertion": self.assertion()}
        fields.update(changes)
        return urllib.parse.urlencode([(k, x) for k, v in fields.items() if v is not None
                                       for x in (v if isinstance(v, list) else [v])])

    def exchange(self, tenant=None, content_type="application/x-www-form-urlencoded", method="POST", **changes):
        headers = {"Accept": "application/json", "client-request-id": REQUEST_ID,
                   "return-client-request-id": "true"}
        if content_type:
            headers["Content-Type"] = content_type
        body = self.form(**changes)
        if content_type == "application/json":
            body = json.dumps(dict(urllib.parse.parse_qsl(body)))
        return self.request(method, self.token_path(tenant), body=body if method == "POST" else None,
                            headers=headers)


def jwt_payload(text):
    part = text.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def make_jwt(payload):
    enc = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()  # noqa: E731
    return "%s.%s.%s" % (enc({"alg": "RS256"}), enc(payload), "c2ln")


def check_error(c, got, status, error, code, what):
    """Entra's error shape: {error, error_description, error_codes, timestamp, trace_id, correlation_id}."""
    st, headers, body = got
    c.eq(st, status, what + ": status")
    if not c.check(isinstance(body, dict), "%s: body is not JSON: %r" % (what, body)):
        return
    c.eq(body.get("error"), error, what + ": error")
    c.eq(body.get("error_codes"), [code], what + ": error_codes")
    desc = body.get("error_description", "")
    c.check(desc.startswith("AADSTS%d: " % code),
            "%s: description %r does not start with AADSTS%d" % (what, desc[:60], code))
    c.check(GUID_RE.match(body.get("trace_id", "")), what + ": trace_id is not a GUID")
    c.eq(body.get("correlation_id"), REQUEST_ID, what + ": correlation_id (the client-request-id)")
    c.check(TIMESTAMP_RE.match(body.get("timestamp", "")), "%s: timestamp %r" % (what, body.get("timestamp")))
    c.check("\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: " % (body.get("trace_id"), REQUEST_ID) in desc,
            what + ": description lacks the trace/correlation/timestamp lines")
    c.check(body.get("error_uri", "").startswith("https://127.0.0.1:"), what + ": error_uri is not the emulator's")
    c.eq(headers.get("x-ms-request-id"), body.get("trace_id"), what + ": x-ms-request-id")
    c.check("access_token" not in body, what + ": error body holds a token")


def check_success(c, got, emu, what, resource=RESOURCE):
    st, headers, body = got
    if not c.eq(st, 200, what + ": status (body %r)" % (body,)):
        return None
    c.eq(sorted(body), ["access_token", "expires_in", "ext_expires_in", "token_type"], what + ": fields")
    c.eq(body.get("token_type"), "Bearer", what + ": token_type")
    c.eq(body.get("expires_in"), 3599, what + ": expires_in")
    c.eq(body.get("ext_expires_in"), 3599, what + ": ext_expires_in")
    payload = jwt_payload(body["access_token"])
    c.eq(payload.get("aud"), resource, what + ": token aud")
    c.eq(payload.get("appid"), emu.env["AZURE_CLIENT_ID"], what + ": token appid")
    c.eq(payload.get("tid"), emu.env["AZURE_TENANT_ID"], what + ": token tid")
    c.eq(headers.get("client-request-id"), REQUEST_ID, what + ": client-request-id echoed")
    c.check("no-store" in headers.get("cache-control", ""), what + ": Cache-Control")
    return payload


# ---- cases ----------------------------------------------------------------------

@case
def exports_and_token_file(c):
    with Emulator() as emu:
        env = emu.env
        c.eq(sorted(env), sorted(["AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
                                  "AZURE_FEDERATED_TOKEN_FILE", "MI_EMULATOR_CA_FILE"]), "exported names")
        c.check(re.match(r"^https://127\.0\.0\.1:\d+/$", env["AZURE_AUTHORITY_HOST"]), "authority host form")
        c.check(GUID_RE.match(env["AZURE_TENANT_ID"]), "tenant is a GUID")
        c.check(GUID_RE.match(env["AZURE_CLIENT_ID"]), "client is a GUID")
        path = env["AZURE_FEDERATED_TOKEN_FILE"]
        c.eq(os.path.basename(path), "azure-identity-token", "token file name")
        if os.name == "posix":
            # kubelet's layout: the file is a link into ..data, itself a link to a timestamped directory.
            c.check(os.path.islink(path), "token file is a symbolic link")
            c.check(os.path.islink(os.path.join(os.path.dirname(path), "..data")), "..data is a link")
        tok = emu.assertion()
        c.eq(len(tok.split(".")), 3, "token file holds a JWT")
        p = jwt_payload(tok)
        c.eq(p.get("aud"), [AUDIENCE], "service-account token aud")
        c.check(p.get("exp", 0) > time.time(), "service-account token exp is in the future")
        c.check(p.get("sub", "").startswith("system:serviceaccount:"), "service-account token sub")
        c.check(p.get("iss", "").startswith("https://"), "service-account token iss")
        st = emu.stats()
        c.eq(st["current_assertion"]["jti"], p.get("jti"), "stats current_assertion")
        c.eq((st["requests"], st["token_requests"], st["rotations"]), (0, 0, 0), "nothing counted yet")
        ca_dir = os.path.dirname(env["MI_EMULATOR_CA_FILE"])
        c.check(os.path.isdir(ca_dir), "certificate directory exists while running")
    c.eq(emu.exit_code, 0, "exit code after SIGTERM")
    c.check(not os.path.exists(ca_dir), "temporary directory removed at exit")


@case
def good_exchange_urllib(c):
    with Emulator() as emu:
        url = emu.env["AZURE_AUTHORITY_HOST"] + emu.env["AZURE_TENANT_ID"] + "/oauth2/v2.0/token"
        req = urllib.request.Request(url, data=emu.form().encode(), method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
            "x-client-SKU": "managed-identity-cpp", "x-client-Ver": "0.0.0",
            "client-request-id": REQUEST_ID, "return-client-request-id": "true"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=emu.context()))
        with opener.open(req, timeout=WAIT) as r:
            got = (r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read()))
        check_success(c, got, emu, "urllib exchange")
        st = emu.stats()
        c.eq((st["requests"], st["token_requests"], st["tokens_issued"], st["unexpected"]), (1, 1, 1, 0), "counters")
        last = st["last_token_request"]
        c.eq(last["tenant"], emu.env["AZURE_TENANT_ID"], "recorded tenant")
        c.check(last["body_params"]["client_assertion"].startswith("<redacted: "), "assertion redacted in stats")
        c.check(emu.assertion() not in json.dumps(st), "the assertion never appears in stats")
        c.eq(last["headers"].get("x-client-sku"), "managed-identity-cpp", "recorded x-client-SKU")
        c.eq(last["headers"].get("client-request-id"), REQUEST_ID, "recorded client-request-id")
        c.eq(last["assertion"]["jti"], st["current_assertion"]["jti"], "recorded assertion jti")
        c.eq(last["body_params"]["scope"], RESOURCE + "/.default", "recorded scope")


@case
def tls_needs_the_exported_ca(c):
    with Emulator() as emu:
        try:
            emu.request("GET", "/__emulator/stats", context=ssl.create_default_context())
            c.check(False, "the system trust store accepted the emulator's certificate")
        except ssl.SSLCertVerificationError:
            pass
        c.eq(emu.request("GET", "/__emulator/stats", server_name="localhost")[0], 200, "SAN DNS:localhost")
        c.eq(emu.request("GET", "/__emulator/stats", server_name="127.0.0.1")[0], 200, "SAN IP:127.0.0.1")
        try:
            emu.request("GET", "/__emulator/stats", server_name="other.test")
            c.check(False, "a name not on the certificate was accepted")
        except ssl.SSLCertVerificationError:
            pass


@case
def bad_requests(c):
    now = int(time.time())
    with Emulator("--tenant-domain", "contoso.onmicrosoft.com") as emu:
        iss = jwt_payload(emu.assertion())["iss"]
        sub = jwt_payload(emu.assertion())["sub"]
        table = [
            ("unknown tenant", dict(tenant="00000000-0000-0000-0000-000000000000"), 400, "invalid_request", 90002),
            ("tenant neither GUID nor domain", dict(tenant="bad..name"), 400, "invalid_request", 900023),
            ("GET", dict(method="GET"), 400, "invalid_request", 900561),
            ("JSON body", dict(content_type="application/json"), 400, "invalid_request", 900144),
            ("no Content-Type", dict(content_type=None), 400, "invalid_request", 900144),
            ("missing grant_type", dict(grant_type=None), 400, "invalid_request", 900144),
            ("grant_type password", dict(grant_type="password"), 400, "unsupported_grant_type", 70003),
            ("missing client_id", dict(client_id=None), 400, "invalid_request", 900144),
            ("wrong client_id", dict(client_id="11111111-1111-1111-1111-111111111111"), 400,
             "unauthorized_client", 700016),
            ("missing scope", dict(scope=None), 400, "invalid_request", 900144),
            ("scope without /.default", dict(scope=RESOURCE), 400, "invalid_scope", 1002012),
            ("two scopes", dict(scope=RESOURCE + "/.default https://graph.microsoft.com/.default"), 400,
             "invalid_scope", 1002012),
            ("missing client_assertion", dict(client_assertion=None), 401, "invalid_client", 7000218),
            ("wrong client_assertion_type", dict(client_assertion_type="jwt"), 400, "invalid_request", 900144),
            ("extra field client_secret", dict(client_secret="s"), 400, "invalid_request", 900144),
            ("resource field", dict(resource=RESOURCE), 400, "invalid_request", 901002),
            ("duplicate scope", dict(scope=[RESOURCE + "/.default"] * 2), 400, "invalid_request", 900144),
            ("claims not JSON", dict(claims="{not json"), 400, "invalid_request", 70011),
            ("assertion not a JWT", dict(client_assertion="abc.def"), 400, "invalid_request", 50027),
            ("assertion without exp", dict(client_assertion=make_jwt({"iss": iss, "sub": sub, "aud": AUDIENCE})),
             400, "invalid_request", 50027),
            ("assertion expired", dict(client_assertion=make_jwt({"iss": iss, "sub": sub, "aud": AUDIENCE,
                                                                  "exp": now - 10})), 401, "invalid_client", 700024),
            ("assertion not yet valid", dict(client_assertion=make_jwt({"iss": iss, "sub": sub, "aud": AUDIENCE,
                                                                        "nbf": now + 3600, "exp": now + 7200})),
             401, "invalid_client", 700024),
            ("assertion audience", dict(client_assertion=make_jwt({"iss": iss, "sub": sub, "aud": "api://other",
                                                                   "exp": now + 600})), 400, "invalid_request", 70021),
            ("assertion issuer", dict(client_assertion=make_jwt({"iss": iss + "x", "sub": sub, "aud": AUDIENCE,
                                                                 "exp": now + 600})), 400, "invalid_request", 70021),
            ("assertion subject case", dict(client_assertion=make_jwt({"iss": iss, "sub": sub.upper(),
                                                                       "aud": AUDIENCE, "exp": now + 600})),
             400, "invalid_request", 70021),
        ]
        for what, changes, status, error, code in table:
            check_error(c, emu.exchange(**changes), status, error, code, what)
        st = emu.stats()
        c.eq((st["token_requests"], st["tokens_issued"], st["unexpected"]), (len(table), 0, 0), "counters after errors")
        # What is accepted: a string aud, the tenant's domain, the GUID in upper case, claims.
        good = make_jwt({"iss": iss, "sub": sub, "aud": AUDIENCE, "exp": now + 600})
        check_success(c, emu.exchange(client_assertion=good), emu, "string aud")
        check_success(c, emu.exchange(tenant="contoso.onmicrosoft.com"), emu, "tenant domain")
        check_success(c, emu.exchange(tenant=emu.env["AZURE_TENANT_ID"].upper()), emu, "tenant GUID upper case")
        claims = json.dumps({"access_token": {"xms_cc": {"values": ["cp1"]}}})
        p = check_success(c, emu.exchange(claims=claims), emu, "with claims")
        c.eq((p or {}).get("xms_cc"), ["cp1"], "capabilities reach the token")
        c.eq(emu.stats()["last_token_request"]["body_params"].get("claims"), claims, "claims recorded")
        # Anything off the token path is unexpected.
        st404 = emu.request("POST", "/%s/oauth2/token" % emu.env["AZURE_TENANT_ID"], body="",
                            headers={"client-request-id": REQUEST_ID})
        c.eq(st404[0], 404, "v1 token path")
        c.eq(emu.stats()["unexpected"], 1, "unexpected counted")


MISTAKES = [
    ("--wrong-client-id", 400, "unauthorized_client", 700016),
    ("--wrong-tenant", 400, "invalid_request", 90002),
    ("--wrong-issuer", 400, "invalid_request", 70021),
    ("--wrong-subject", 400, "invalid_request", 70021),
    ("--wrong-audience", 400, "invalid_request", 70021),
    ("--expired-assertion", 401, "invalid_client", 700024),
    ("--malformed-assertion", 400, "invalid_request", 50027),
]


@case
def mistake_options(c):
    for flag, status, error, code in MISTAKES:
        with Emulator(flag) as emu:
            got = emu.exchange()
            check_error(c, got, status, error, code, flag)
            desc = got[2].get("error_description", "") if isinstance(got[2], dict) else ""
            if code == 70021:
                p = jwt_payload(emu.assertion())
                c.check("Assertion Issuer: '%s'. Assertion Subject: '%s'." % (p["iss"], p["sub"]) in desc,
                        flag + ": 70021 names the assertion's issuer and subject")
            if code == 700016:
                c.check(emu.env["AZURE_CLIENT_ID"] in desc, flag + ": 700016 names the client ID")
            if code == 90002:
                c.check(emu.env["AZURE_TENANT_ID"] in desc, flag + ": 90002 names the tenant")
            st = emu.stats()
            c.eq((st["token_requests"], st["tokens_issued"]), (1, 0), flag + ": counters")


@case
def injected_failures_then_success(c):
    with Emulator("--fail", 2, "--retry-after", 1, "--fail-status", 503) as emu:
        for i in range(2):
            st, headers, body = emu.exchange()
            c.eq(st, 503, "failure %d status" % i)
            c.eq(headers.get("retry-after"), "1", "failure %d Retry-After" % i)
            c.check(isinstance(body, dict) and body.get("correlation_id") == REQUEST_ID
                    and "trace_id" in body and "error_codes" in body, "failure %d has Entra's error shape" % i)
        check_success(c, emu.exchange(), emu, "after the failures")
        st = emu.stats()
        c.eq((st["token_requests"], st["failures"], st["tokens_issued"]), (3, 2, 1), "counters")


@case
def token_proxy_with_sni(c):
    with Emulator("--token-proxy", "--proxy-path", "/tokenproxy") as emu:
        env = emu.env
        c.eq(sorted(env), sorted(["AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
                                  "AZURE_FEDERATED_TOKEN_FILE", "AZURE_KUBERNETES_TOKEN_PROXY",
                                  "AZURE_KUBERNETES_SNI_NAME", "AZURE_KUBERNETES_CA_FILE"]), "exported names")
        c.eq(env["AZURE_KUBERNETES_TOKEN_PROXY"], "https://127.0.0.1:%d/tokenproxy" % emu.port, "proxy URL")
        c.eq(env["AZURE_KUBERNETES_SNI_NAME"], "aks-proxy.test", "SNI name")
        p = check_success(c, emu.exchange(), emu, "through the proxy")
        c.check(p is not None, "token through the proxy")
        c.eq(emu.stats()["last_token_request"]["path"],
             "/tokenproxy/%s/oauth2/v2.0/token" % env["AZURE_TENANT_ID"], "prefixed path")
        # The authority's own path (the prefix forgotten) is not the token endpoint.
        st = emu.request("POST", "/%s/oauth2/v2.0/token" % env["AZURE_TENANT_ID"], body=emu.form(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        c.eq(st[0], 404, "unprefixed path")
        c.eq(emu.stats()["unexpected"], 1, "unprefixed path counted as unexpected")
        # The certificate names only the SNI name, and the proxy refuses any other SNI (or none).
        ctx = emu.context()
        with socket.create_connection(("127.0.0.1", emu.port), timeout=WAIT) as sock:
            with ctx.wrap_socket(sock, server_hostname="aks-proxy.test") as tls:
                sans = tls.getpeercert().get("subjectAltName")
        c.eq(sans, (("DNS", "aks-proxy.test"),), "certificate names")
        # (127.0.0.1 as the server name sends no SNI: a client that checks the host it connected to.)
        for name, what in (("127.0.0.1", "no SNI"), ("other.test", "another SNI")):
            try:
                emu.request("GET", "/__emulator/stats", server_name=name)
                c.check(False, what + " was accepted")
            except (ssl.SSLError, OSError):
                pass
        c.eq(emu.stats()["tls_sni_rejected"], 2, "rejected handshakes counted")
        try:
            emu.request("GET", "/__emulator/stats", context=ssl.create_default_context())
            c.check(False, "the system trust store accepted the proxy's certificate")
        except (ssl.SSLError, OSError):
            pass


@case
def token_proxy_ca_data(c):
    with Emulator("--token-proxy", "--proxy-ca-data") as emu:
        data = emu.env.get("AZURE_KUBERNETES_CA_DATA", "")
        c.check(data.startswith("-----BEGIN CERTIFICATE-----") and data.rstrip().endswith("-----END CERTIFICATE-----"),
                "AZURE_KUBERNETES_CA_DATA is PEM text")
        c.check("AZURE_KUBERNETES_CA_FILE" not in emu.env, "no CA file exported with --proxy-ca-data")
        c.eq(emu.env["AZURE_KUBERNETES_TOKEN_PROXY"], "https://127.0.0.1:%d" % emu.port, "proxy URL without a path")
        check_success(c, emu.exchange(), emu, "trusting the CA data")


@case
def rotation_on_demand(c):
    with Emulator() as emu:
        path = emu.env["AZURE_FEDERATED_TOKEN_FILE"]
        d = os.path.dirname(path)
        first = emu.assertion()
        first_target = os.readlink(os.path.join(d, "..data")) if os.name == "posix" else None
        r = emu.rotate()
        second = emu.assertion()
        c.check(second != first, "the file changed")
        c.eq(r["current_assertion"]["jti"], jwt_payload(second)["jti"], "rotate answers the new token's jti")
        c.eq(r["rotations"], 1, "rotations")
        if os.name == "posix":
            c.check(os.readlink(os.path.join(d, "..data")) != first_target, "..data points elsewhere")
            c.check(not os.path.exists(os.path.join(d, first_target)), "the old data directory is removed")
            c.eq(len(os.listdir(d)), 3, "..data, one data directory and the token link")
        check_success(c, emu.exchange(), emu, "with the rotated token")
        c.eq(emu.stats()["last_token_request"]["assertion"]["jti"], jwt_payload(second)["jti"],
             "the request carried the rotated token")
        check_success(c, emu.exchange(client_assertion=first), emu, "the previous token until its exp")
        emu.rotate("expired")
        check_error(c, emu.exchange(), 401, "invalid_client", 700024, "after rotating to an expired token")
        emu.rotate("wrong-subject")
        check_error(c, emu.exchange(), 400, "invalid_request", 70021, "after rotating to a wrong subject")
        emu.rotate("none")
        check_success(c, emu.exchange(), emu, "after rotating back to a good token")
        c.eq(emu.stats()["rotations"], 4, "rotations counted")
        c.eq(emu.stats()["requests"], 5, "control requests are not counted")
        c.eq(emu.request("POST", "/__emulator/rotate?mistake=bogus")[0], 400, "unknown mistake refused")
        c.eq(emu.request("GET", "/__emulator/rotate")[0], 405, "rotate needs POST")


@case
def rotation_periodic(c):
    with Emulator("--rotate-token-every", "0.5") as emu:
        first = emu.assertion()
        deadline = time.monotonic() + WAIT
        changed = False
        while time.monotonic() < deadline:
            try:
                if emu.assertion() != first:
                    changed = True
                    break
            except OSError:
                c.check(False, "the token file was missing during a rotation")
                break
            time.sleep(0.05)
        c.check(changed, "the token file was rotated within %d s" % WAIT)
        c.check(emu.stats()["rotations"] >= 1, "rotations counted")
        check_success(c, emu.exchange(), emu, "with a periodically rotated token")


@case
def rotation_concurrent(c):
    """The timer and the control endpoint rotating at once keep kubelet's layout intact."""
    with Emulator("--rotate-token-every", "0.01") as emu:
        errors = []

        def rotate_many():
            try:
                for _ in range(40):
                    emu.rotate()
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=rotate_many) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        c.eq(errors, [], "rotate requests")
        path = emu.env["AZURE_FEDERATED_TOKEN_FILE"]
        if os.name == "posix":
            c.check(os.path.islink(path), "the token file is still a link into ..data")
            c.eq(len(os.listdir(os.path.dirname(path))), 3, "..data, one data directory and the token link")
        check_success(c, emu.exchange(), emu, "after concurrent rotations")


@case
def argument_errors(c):
    for args in (["--source", "imds", "--token-proxy"], ["--source", "workload", "--proxy-path", "/x"],
                 ["--source", "workload", "--client-id", "not-a-guid"],
                 ["--source", "workload", "--wrong-issuer", "--expired-assertion"],
                 ["--source", "appservice", "--wrong-tenant"],
                 ["--source", "workload", "--token-proxy", "--proxy-path", "noslash"]):
        r = subprocess.run([sys.executable, EMULATOR] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=WAIT)
        c.eq(r.returncode, 2, "exit code for %s" % " ".join(args))
        c.check("READY" not in r.stdout, "%s: did not start" % " ".join(args))
    r = subprocess.run([sys.executable, EMULATOR, "--help"], stdout=subprocess.PIPE, text=True, timeout=WAIT)
    for flag in ("--wrong-client-id", "--wrong-tenant", "--wrong-issuer", "--wrong-subject", "--wrong-audience",
                 "--expired-assertion", "--malformed-assertion", "--token-proxy", "--rotate-token-every",
                 "AADSTS70021", "AADSTS700016", "AADSTS700024", "AADSTS90002"):
        c.check(flag in r.stdout, "--help mentions " + flag)


@case
def other_sources_unchanged(c):
    proc = subprocess.Popen([sys.executable, EMULATOR, "--source", "imds"], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            if line.strip() == "READY":
                break
            lines.append(line)
        base = shlex.split(lines[0])[1].partition("=")[2]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(base + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
                                     + urllib.parse.quote(RESOURCE, safe=""), headers={"Metadata": "true"})
        with opener.open(req, timeout=WAIT) as r:
            body = json.loads(r.read())
        c.eq(body.get("expires_in"), "86400", "IMDS keeps its default lifetime and string numbers")
        with opener.open(base + "/__emulator/stats", timeout=WAIT) as r:
            st = json.loads(r.read())
        c.check("rotations" not in st and "tls_sni_rejected" not in st, "no workload counters for IMDS")
        c.check("tenant" not in (st.get("last_token_request") or {}), "no workload fields in IMDS requests")
    finally:
        proc.send_signal(signal.SIGTERM)
        c.eq(proc.wait(WAIT), 0, "IMDS emulator exit code")
        proc.stdout.close()


def main(argv):
    if shutil.which("openssl") is None:
        print("SKIPPED: the openssl command-line tool is needed to make the emulator's certificates")
        return 77
    filters = argv[1:]
    passed = failed = 0
    for fn in CASES:
        if filters and not any(f in fn.__name__ for f in filters):
            continue
        c = Case(fn.__name__)
        try:
            fn(c)
        except Exception:  # a crash in a case fails it, the others still run
            c.errors.append("raised:\n" + traceback.format_exc())
        if c.errors:
            failed += 1
            print("FAIL %s" % c.name)
            for e in c.errors:
                print("    " + e.replace("\n", "\n    "))
        else:
            passed += 1
            print("ok   %s" % c.name)
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
