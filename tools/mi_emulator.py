#!/usr/bin/env python3
"""A local emulator of the Azure managed identity token endpoints (Python 3 stdlib only).

    python3 tools/mi_emulator.py --source imds|appservice|azureml|cloudshell|arc|servicefabric [options]

It listens on 127.0.0.1 (port 0, i.e. a free port, unless --port is given), prints the
environment a client needs as `export NAME=value` lines followed by a line `READY`, and
then answers token requests the way the real endpoint of that source does: the same checks
(api-version, identity headers, method, body), the same success body shapes (including the
date-string `expires_on` forms) and the same error shapes (flat or nested), as described in
docs/protocol.md.

    eval "$(python3 tools/mi_emulator.py --source imds | sed '/^READY$/q')"   # or --env-file

Tokens are token-shaped strings (header.payload.signature, base64url) whose payload holds
`aud` (the resource), the identity that was requested, `exp` and a counter `n`; every
issuance differs. `GET /__emulator/stats` (no auth) returns counters as JSON:

    requests         every request except the stats requests themselves
    token_requests   requests to the token endpoint (for Azure Arc: both legs)
    tokens_issued    successful token responses
    challenges       Azure Arc 401 challenges sent (leg 1)
    failures         failures injected with --fail
    unexpected       requests to any other path (e.g. an unexpected IMDS fallback)
    last_token_request  {method, path, query: {name: value}, header_names: [...], body_params}

Request and secret header values, Authorization and tokens are never logged.
SIGTERM / SIGINT stop it cleanly (the Arc key file and the temporary certificate directory
are removed).
"""
import argparse
import base64
import datetime
import hashlib
import http.server
import json
import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

TOKEN_PATH = "/metadata/identity/oauth2/token"
SOURCES = {
    # name: (path, api-version or None, human name)
    "imds": (TOKEN_PATH, "2018-02-01", "IMDS"),
    "appservice": ("/msi/token", "2019-08-01", "App Service"),
    "azureml": ("/MSI/auth", "2017-09-01", "Azure ML"),
    "cloudshell": ("/oauth2/token", None, "Cloud Shell"),
    "arc": (TOKEN_PATH, "2020-06-01", "Azure Arc"),
    "servicefabric": (TOKEN_PATH, "2019-07-01-preview", "Service Fabric"),
}
# Sources whose success bodies carry every value as a string.
STRING_SOURCES = {"imds", "arc", "cloudshell"}
# Sources whose errors use the nested {"error": {"code", "message"}} shape.
NESTED_ERROR_SOURCES = {"servicefabric", "cloudshell"}
# Header names whose values must never appear in a log line.
SECRET_HEADERS = {"x-identity-header", "secret", "authorization", "cookie"}
ID_PARAMS = ("client_id", "object_id", "msi_res_id", "mi_res_id", "clientid", "principal_id")
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 410: "Gone", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def format_expires_on(epoch, fmt):
    """`expires_on` in one of the forms seen in the wild (all UTC)."""
    if fmt == "epoch":
        return str(epoch)
    t = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    if fmt == "iso":
        return t.strftime("%Y-%m-%dT%H:%M:%S") + ".0000000+00:00"
    if fmt == "ml-ampm":
        hour12 = t.hour % 12 or 12
        ampm = "AM" if t.hour < 12 else "PM"
        return "%d/%d/%d %d:%02d:%02d %s +00:00" % (t.month, t.day, t.year, hour12, t.minute, t.second, ampm)
    if fmt == "ml-24h":
        return t.strftime("%m/%d/%Y %H:%M:%S") + " +00:00"
    raise ValueError(fmt)


class Emulator:
    """State shared by the request handlers."""

    def __init__(self, args):
        self.args = args
        self.source = args.source
        self.path, self.api_version, self.name = SOURCES[args.source]
        self.secret = secrets.token_hex(16)
        self.system_client_id = str(uuid.uuid4())
        self.lock = threading.Lock()
        self.counter = 0
        self.stats = {"requests": 0, "token_requests": 0, "tokens_issued": 0, "challenges": 0,
                      "failures": 0, "unexpected": 0, "last_token_request": None}
        self.arc_key_path = None
        self.cert_dir = None
        self.thumbprint = None
        fmt = args.expires_on_format
        if fmt is None:
            fmt = "ml-ampm" if self.source == "azureml" else "epoch"
        self.expires_on_format = fmt

    # ---- tokens ---------------------------------------------------------------

    def make_token(self, resource, identity, exp):
        with self.lock:
            self.counter += 1
            n = self.counter
        header = {"typ": "JWT", "alg": "RS256", "kid": "mi-emulator"}
        payload = {"aud": resource, "iss": "https://sts.windows.net/mi-emulator/", "iat": int(time.time()),
                   "nbf": int(time.time()), "exp": exp, "n": n, "source": self.source,
                   "jti": secrets.token_hex(8)}
        payload.update(identity)
        return ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()),
                         b64url(json.dumps(payload, separators=(",", ":")).encode()),
                         b64url(secrets.token_bytes(64))])

    def success_body(self, resource, params):
        """The success body in this source's shape; `params` holds the request's parameters."""
        now = int(time.time())
        lifetime = self.args.lifetime
        exp = now + lifetime
        identity = {}
        echo = {}
        if self.source == "azureml":
            if params.get("clientid"):
                identity["appid"] = params["clientid"]
        else:
            for name, claim in (("client_id", "appid"), ("object_id", "oid"),
                                ("msi_res_id", "xms_mirid"), ("mi_res_id", "xms_mirid")):
                if params.get(name):
                    identity[claim] = params[name]
                    echo[name] = params[name]
        if not identity:
            identity = {"appid": self.system_client_id, "idtyp": "system"}
        token = self.make_token(resource, identity, exp)
        strings = self.source in STRING_SOURCES
        fmt = self.expires_on_format
        if fmt == "epoch":
            # Service Fabric sends a JSON number; every other source an epoch string.
            expires_on = exp if self.source == "servicefabric" else str(exp)
        else:
            expires_on = format_expires_on(exp, fmt)

        def num(v):
            return str(v) if strings else v

        if self.source in ("imds", "arc"):
            body = {"access_token": token, "expires_in": num(lifetime), "expires_on": expires_on,
                    "ext_expires_in": num(lifetime), "not_before": num(now), "resource": resource,
                    "token_type": "Bearer"}
            if self.source == "imds" and not echo:
                body["client_id"] = self.system_client_id
        elif self.source == "appservice":
            body = {"access_token": token, "expires_on": expires_on, "resource": resource,
                    "token_type": "Bearer"}
            if not echo:
                body["client_id"] = self.system_client_id
        elif self.source == "azureml":
            body = {"access_token": token, "expires_on": expires_on, "resource": resource,
                    "token_type": "Bearer"}
        elif self.source == "cloudshell":
            body = {"access_token": token, "refresh_token": "", "expires_in": num(lifetime),
                    "expires_on": expires_on, "not_before": num(now), "resource": resource,
                    "token_type": "Bearer"}
        else:  # servicefabric
            body = {"token_type": "Bearer", "access_token": token, "expires_on": expires_on,
                    "resource": resource}
        if not self.args.no_echo:
            body.update(echo)
        if self.args.refresh_in is not None:
            body["refresh_in"] = num(self.args.refresh_in)
        return body

    # ---- errors ---------------------------------------------------------------

    def error_body(self, code, message):
        if self.source in NESTED_ERROR_SOURCES:
            err = {"code": code, "message": message}
            if self.source == "servicefabric":
                err = {"correlationId": str(uuid.uuid4()), "code": code, "message": message}
            return {"error": err}
        return {"error": code, "error_description": message, "correlation_id": str(uuid.uuid4())}

    # ---- setup / teardown -----------------------------------------------------

    def setup_arc(self):
        d = self.args.arc_token_dir
        os.makedirs(d, exist_ok=True)
        self.arc_key_path = os.path.join(d, "%s.key" % uuid.uuid4())
        fd = os.open(self.arc_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.secret)

    def setup_tls(self):
        self.cert_dir = tempfile.mkdtemp(prefix="mi-emulator-")
        cert = os.path.join(self.cert_dir, "cert.pem")
        key = os.path.join(self.cert_dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        self.thumbprint = hashlib.sha1(der).hexdigest().upper()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx

    def cleanup(self):
        if self.arc_key_path:
            try:
                os.unlink(self.arc_key_path)
            except OSError:
                pass
            self.arc_key_path = None
        if self.cert_dir:
            shutil.rmtree(self.cert_dir, ignore_errors=True)
            self.cert_dir = None

    def exports(self, port):
        base = "http://127.0.0.1:%d" % port
        s = self.source
        env = []
        if s == "imds":
            env.append(("AZURE_POD_IDENTITY_AUTHORITY_HOST", base))
        elif s == "appservice":
            env += [("IDENTITY_ENDPOINT", base + self.path), ("IDENTITY_HEADER", self.secret)]
        elif s == "azureml":
            env += [("MSI_ENDPOINT", base + self.path), ("MSI_SECRET", self.secret)]
            if self.args.default_client_id:
                env.append(("DEFAULT_IDENTITY_CLIENT_ID", self.args.default_client_id))
        elif s == "cloudshell":
            env.append(("MSI_ENDPOINT", base + self.path))
        elif s == "arc":
            env += [("IDENTITY_ENDPOINT", base + self.path), ("IMDS_ENDPOINT", base)]
        else:
            env += [("IDENTITY_ENDPOINT", "https://127.0.0.1:%d%s" % (port, self.path)),
                    ("IDENTITY_HEADER", self.secret), ("IDENTITY_SERVER_THUMBPRINT", self.thumbprint)]
        return ["export %s=%s" % (k, shlex.quote(v)) for k, v in env]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stalls mid-request does not hold a thread forever
    server_version = "mi-emulator/1.0"
    sys_version = ""

    # Quiet: our own log line (without secrets) replaces the default one.
    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's name)
        pass

    def log_error(self, format, *args):  # noqa: A002
        if self.server.emu.args.verbose:
            sys.stderr.write("mi-emulator: " + (format % args) + "\n")

    @property
    def emu(self):
        return self.server.emu

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    # ---- plumbing ------------------------------------------------------------

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                return None  # chunked request bodies are not expected from this client
            return b""
        try:
            n = int(length)
        except ValueError:
            return None
        if n < 0 or n > 1 << 20:
            return None
        return self.rfile.read(n)

    def send(self, status, body, extra_headers=(), content_type="application/json; charset=utf-8"):
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode("utf-8")
        else:
            data = body.encode("utf-8") if isinstance(body, str) else body
        self.close_connection = True
        self.send_response_only(status, REASONS.get(status, "Status"))
        self.send_header("Date", self.date_time_string())
        self.send_header("Server", self.server_version)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
        if self.emu.args.verbose:
            sys.stderr.write("mi-emulator: %s -> %d\n" % (self.describe(), status))
            sys.stderr.flush()

    def describe(self):
        """The request line and header names, never a secret or token value."""
        names = sorted({k.lower() for k in self.headers.keys()})
        return "%s %s [headers: %s]" % (self.command, self.path, ", ".join(names))

    def fail(self, status, code, message, extra_headers=()):
        self.send(status, self.emu.error_body(code, message), extra_headers)

    def header(self, name):
        return self.headers.get(name)

    # ---- dispatch --------------------------------------------------------------

    def handle_any(self):
        emu = self.emu
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/__emulator/stats":
            with emu.lock:
                stats = json.loads(json.dumps(emu.stats))
            self.send(200, stats)
            return
        with emu.lock:
            emu.stats["requests"] += 1
        # The real endpoints accept the token path with a trailing slash (MSAL Node sends one).
        if parsed.path.rstrip("/") != emu.path:
            with emu.lock:
                emu.stats["unexpected"] += 1
            self.fail(404, "not_found", "No such endpoint: %s (the %s emulator serves %s)"
                      % (parsed.path, emu.name, emu.path))
            return
        body = self.read_body()
        if body is None:
            self.fail(400, "invalid_request", "Malformed request body framing")
            return
        query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        body_params = []
        ctype = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        if body and ctype == "application/x-www-form-urlencoded":
            body_params = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        with emu.lock:
            emu.stats["token_requests"] += 1
            emu.stats["last_token_request"] = {
                "method": self.command, "path": parsed.path, "query": dict(query),
                "header_names": sorted({k.lower() for k in self.headers.keys()}),
                "body_params": dict(body_params)}
            inject = emu.stats["failures"] < emu.args.fail
            if inject:
                emu.stats["failures"] += 1
        if emu.args.delay_ms > 0:
            time.sleep(emu.args.delay_ms / 1000.0)
        if inject:
            self.inject_failure()
            return
        getattr(self, "serve_" + emu.source)(query, body_params, ctype)

    def inject_failure(self):
        emu = self.emu
        status = emu.args.fail_status
        headers = []
        if emu.args.retry_after is not None:
            headers.append(("Retry-After", str(emu.args.retry_after)))
        if emu.args.fail_body == "plain":
            self.send(status, "%d %s (injected by mi-emulator)\n" % (status, REASONS.get(status, "")),
                      headers, content_type="text/plain; charset=utf-8")
        else:
            self.fail(status, "injected_failure" if status != 400 else "invalid_request",
                      "Failure injected by mi-emulator (status %d)" % status, headers)

    def check_common(self, query, method="GET"):
        """Method, duplicate parameters, api-version. Returns dict(params) or None (answered)."""
        emu = self.emu
        if self.command != method:
            self.fail(405, "invalid_request", "%s expects %s, got %s" % (emu.name, method, self.command))
            return None
        names = [k for k, _ in query]
        dups = sorted({k for k in names if names.count(k) > 1})
        if dups:
            self.fail(400, "invalid_request", "Duplicate query parameter(s): %s" % ", ".join(dups))
            return None
        params = dict(query)
        if emu.api_version is not None and params.get("api-version") != emu.api_version:
            if "api-version" not in params:
                self.fail(400, "invalid_request", "Required query parameter api-version not specified")
            else:
                self.fail(400, "invalid_request", "Invalid api-version %r; expected %s"
                          % (params["api-version"], emu.api_version))
            return None
        return params

    def check_resource(self, params):
        resource = params.get("resource")
        if not resource:
            if self.emu.source in NESTED_ERROR_SOURCES:
                self.fail(400, "BadRequest", "Invalid resource: required parameter resource is missing")
            else:
                self.fail(400, "invalid_request", "Required audience parameter not specified")
            return None
        if resource.endswith("/.default") or "scope" in params:
            self.fail(400, "invalid_resource", "AADSTS500011: The resource principal named %s was not "
                      "found (send the resource, not a scope)" % resource)
            return None
        return resource

    def check_ids(self, params, allowed):
        present = [k for k in ID_PARAMS if k in params]
        extra = [k for k in present if k not in allowed]
        if extra:
            self.fail(400, "invalid_request", "Unsupported identity parameter(s) for %s: %s"
                      % (self.emu.name, ", ".join(extra)))
            return False
        given = [k for k in present if params[k]]
        if len(given) > 1:
            self.fail(400, "invalid_request", "Only one of %s may be given" % ", ".join(given))
            return False
        return True

    def issue(self, resource, params):
        body = self.emu.success_body(resource, params)
        with self.emu.lock:
            self.emu.stats["tokens_issued"] += 1
        self.send(200, body)

    # ---- sources ---------------------------------------------------------------

    def serve_imds(self, query, body_params, ctype):
        if self.header("X-Forwarded-For") is not None:
            self.fail(400, "invalid_request", "Request contains X-Forwarded-For header")
            return
        if (self.header("Metadata") or "").lower() != "true":
            self.fail(400, "invalid_request", "Required metadata header not specified")
            return
        params = self.check_common(query)
        if params is None:
            return
        resource = self.check_resource(params)
        if resource is None or not self.check_ids(params, ("client_id", "object_id", "msi_res_id")):
            return
        self.issue(resource, params)

    def serve_appservice(self, query, body_params, ctype):
        secret = self.header("X-IDENTITY-HEADER")
        if secret is None:
            self.fail(400, "invalid_request", "Required header X-IDENTITY-HEADER not specified")
            return
        if not secrets.compare_digest(secret.encode("utf-8", "replace"), self.emu.secret.encode()):
            self.fail(401, "unauthorized", "X-IDENTITY-HEADER does not match IDENTITY_HEADER")
            return
        params = self.check_common(query)
        if params is None:
            return
        resource = self.check_resource(params)
        if resource is None or not self.check_ids(params, ("client_id", "object_id", "mi_res_id")):
            return
        self.issue(resource, params)

    def serve_azureml(self, query, body_params, ctype):
        secret = self.header("secret")
        if secret is None or not secrets.compare_digest(secret.encode("utf-8", "replace"),
                                                        self.emu.secret.encode()):
            self.fail(401, "unauthorized", "The secret header is missing or does not match MSI_SECRET")
            return
        params = self.check_common(query)
        if params is None:
            return
        resource = self.check_resource(params)
        if resource is None or not self.check_ids(params, ("clientid",)):
            return
        if "clientid" not in params:
            self.fail(400, "invalid_request", "Required query parameter clientid not specified")
            return
        self.issue(resource, params)

    def serve_cloudshell(self, query, body_params, ctype):
        if self.command != "POST":
            self.fail(405, "MethodNotAllowed", "Cloud Shell expects POST, got %s" % self.command)
            return
        if (self.header("Metadata") or "").lower() != "true":
            self.fail(400, "BadRequest", "Required metadata header not specified")
            return
        if ctype != "application/x-www-form-urlencoded":
            self.fail(400, "BadRequest", "Content-Type must be application/x-www-form-urlencoded")
            return
        if query:
            self.fail(400, "BadRequest", "Cloud Shell takes no query parameters")
            return
        names = [k for k, _ in body_params]
        if len(set(names)) != len(names):
            self.fail(400, "BadRequest", "Duplicate form parameter")
            return
        params = dict(body_params)
        resource = self.check_resource(params)
        if resource is None or not self.check_ids(params, ()):
            return
        self.issue(resource, params)

    def serve_arc(self, query, body_params, ctype):
        emu = self.emu
        if (self.header("Metadata") or "").lower() != "true":
            self.fail(400, "invalid_request", "Required metadata header not specified")
            return
        params = self.check_common(query)
        if params is None:
            return
        auth = self.header("Authorization")
        if auth is None:
            with emu.lock:
                emu.stats["challenges"] += 1
            self.send(401, {"error": "unauthorized", "error_description": "Authentication required"},
                      [("WWW-Authenticate", "Basic realm=%s" % emu.arc_key_path)])
            return
        expected = ("Basic " + emu.secret).encode()
        if not secrets.compare_digest(auth.encode("utf-8", "replace"), expected):
            self.fail(401, "unauthorized", "The Authorization header does not hold the key file's contents")
            return
        resource = self.check_resource(params)
        if resource is None or not self.check_ids(params, ("client_id", "object_id", "msi_res_id")):
            return
        self.issue(resource, params)

    def serve_servicefabric(self, query, body_params, ctype):
        secret = self.header("Secret")
        if secret is None:
            self.fail(401, "SecretHeaderNotFound", "Secret is not found in the request headers.")
            return
        if not secrets.compare_digest(secret.encode("utf-8", "replace"), self.emu.secret.encode()):
            self.fail(401, "SecretHeaderMismatch", "Secret does not match IDENTITY_HEADER.")
            return
        params = self.check_common(query)
        if params is None:
            return
        resource = self.check_resource(params)
        if resource is None or not self.check_ids(params, ()):
            return
        self.issue(resource, params)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 1024  # bursts of concurrent clients (the default backlog of 5 drops them)

    def __init__(self, addr, emu, tls_context=None):
        self.emu = emu
        self.tls_context = tls_context
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's own thread, so a stalled or aborted
        # client (e.g. one that rejects the certificate) never blocks the listener.
        if self.tls_context is not None:
            request.settimeout(30)
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                if self.emu.args.verbose:
                    sys.stderr.write("mi-emulator: TLS handshake failed: %s\n" % e)
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if self.tls_context is not None:
                try:
                    request.close()
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        if self.emu.args.verbose:
            sys.stderr.write("mi-emulator: error while serving %s: %s\n" % (client_address[0], sys.exc_info()[1]))


def parse_args(argv):
    p = argparse.ArgumentParser(description="Local emulator of the Azure managed identity endpoints.")
    p.add_argument("--source", required=True, choices=sorted(SOURCES))
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    p.add_argument("--env-file", help="also write the export lines to this file")
    p.add_argument("--default-client-id", help="Azure ML: export DEFAULT_IDENTITY_CLIENT_ID")
    p.add_argument("--arc-token-dir", default="/var/opt/azcmagent/tokens",
                   help="Azure Arc: directory of the key file (created if missing)")
    p.add_argument("--expires-on-format", choices=["epoch", "iso", "ml-ampm", "ml-24h"],
                   help="form of expires_on (default: ml-ampm for azureml, epoch otherwise)")
    p.add_argument("--lifetime", type=int, default=86400, help="token lifetime in seconds")
    p.add_argument("--refresh-in", type=int, help="add refresh_in (seconds) to token responses")
    p.add_argument("--fail", type=int, default=0, metavar="N",
                   help="the first N token requests answer --fail-status")
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--fail-body", choices=["json", "plain"], default="json",
                   help="body of injected failures: the source's JSON error shape or plain text")
    p.add_argument("--retry-after", type=int, metavar="S", help="send Retry-After: S with injected failures")
    p.add_argument("--delay-ms", type=int, default=0, help="wait this long before answering a token request")
    p.add_argument("--no-echo", action="store_true", help="do not echo the user-assigned ID in responses")
    p.add_argument("--verbose", action="store_true", help="log each request (never secrets) to stderr")
    args = p.parse_args(argv)
    if args.lifetime <= 0:
        p.error("--lifetime must be positive")
    if args.fail < 0 or args.delay_ms < 0 or not (0 <= args.port <= 65535):
        p.error("--fail, --delay-ms and --port must not be negative")
    if not (100 <= args.fail_status <= 599):
        p.error("--fail-status must be an HTTP status")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    emu = Emulator(args)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        tls = None
        if args.source == "servicefabric":
            tls = emu.setup_tls()
        if args.source == "arc":
            emu.setup_arc()
        server = Server(("127.0.0.1", args.port), emu, tls)
    except (OSError, subprocess.CalledProcessError, ssl.SSLError) as e:
        emu.cleanup()
        sys.stderr.write("mi-emulator: cannot start: %s\n" % e)
        return 1
    port = server.server_address[1]
    lines = emu.exports(port)
    if args.env_file:
        with open(args.env_file, "w") as f:
            f.write("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\nREADY\n")
    sys.stdout.flush()
    if args.verbose:
        sys.stderr.write("mi-emulator: %s on 127.0.0.1:%d\n" % (emu.name, port))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        while not stop.is_set():
            stop.wait(0.5)
    finally:
        server.shutdown()
        server.server_close()
        emu.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
