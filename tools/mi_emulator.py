#!/usr/bin/env python3
"""A local emulator of the Azure managed identity token endpoints (Python 3 stdlib only).

    python3 tools/mi_emulator.py --source imds|appservice|azureml|cloudshell|arc|servicefabric [options]
    python3 tools/mi_emulator.py --source workload [--token-proxy] [options]

It listens on 127.0.0.1 (port 0, i.e. a free port, unless --port is given), prints the
environment a client needs as `export NAME=value` lines followed by a line `READY`, and
then answers token requests the way the real endpoint of that source does: the same checks
(api-version, identity headers, method, body), the same success body shapes (including the
date-string `expires_on` forms) and the same error shapes (flat or nested), as described in
docs/protocol.md.

`--source workload` is different: it plays Microsoft Entra ID's token endpoint for AKS workload
identity (docs/protocol.md §12, docs/workload_identity.md) over HTTPS, with a certificate
authority it makes at start, and writes the projected service-account token a pod would get.
With `--token-proxy` it plays the AKS identity binding token proxy instead (its own CA, a
certificate for one SNI name only). `POST /__emulator/rotate[?mistake=...]` rotates the
service-account token file at once; `--rotate-token-every S` does it periodically.

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
  workload only:
    rotations        service-account tokens written after the first one
    tls_sni_rejected handshakes refused because the SNI name was not --sni-name (--token-proxy)
    current_assertion   {jti, iss, sub, exp} of the token file now on disk
    last_token_request  also {tenant, headers: {name: value} for the non-secret headers,
                     assertion: {jti, iss, sub, aud, exp} when it parsed}; client_assertion in
                     body_params is replaced by "<redacted: N bytes>"

Request and secret header values, Authorization and tokens are never logged.
SIGTERM / SIGINT stop it cleanly (the Arc key file and the temporary directory of certificates
and service-account tokens are removed). Nothing is ever sent anywhere: it only listens on
127.0.0.1.
"""
import argparse
import base64
import datetime
import hashlib
import http.server
import json
import os
import re
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
    "workload": ("/{tenant}/oauth2/v2.0/token", None, "Entra ID (workload identity)"),
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


# ---- workload identity (Entra ID token endpoint) ----------------------------------
AUDIENCE = "api://AzureADTokenExchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The only form fields the client may send (docs/protocol.md §12); anything else is refused so a
# client that leaks an extra field (a resource, a secret) is caught.
WORKLOAD_FIELDS = ("grant_type", "client_id", "scope", "client_assertion_type", "client_assertion", "claims")
# Request headers whose values are recorded in stats (none of them carries a secret).
WORKLOAD_RECORDED_HEADERS = ("content-type", "accept", "x-client-sku", "x-client-ver", "client-request-id",
                             "return-client-request-id")
# What a rotated service-account token can get wrong (--wrong-issuer etc., /__emulator/rotate?mistake=).
MISTAKES = ("none", "wrong-issuer", "wrong-subject", "wrong-audience", "expired", "malformed")
TOKEN_FILE_NAME = "azure-identity-token"   # the name the workload identity webhook projects
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DOMAIN_RE = re.compile(r"^[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*$")
ASSERTION_SKEW = 300  # seconds of clock skew Entra tolerates on nbf


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def entra_time(epoch):
    """Entra's timestamp form, e.g. `2026-12-02 19:51:37Z`."""
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def iso_time(epoch):
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(directory, stem, common_name):
    """A CA certificate (returned) and its key (stem.key) made with the openssl CLI (P-256 keys:
    made in milliseconds, and every TLS stack a client might use accepts them)."""
    cnf = os.path.join(directory, stem + ".cnf")
    with open(cnf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n"
                "[dn]\nCN = %s\n"
                "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
                "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n" % common_name)
    cert = os.path.join(directory, stem + ".pem")
    openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-sha256", "-config", cnf,
            "-keyout", os.path.join(directory, stem + ".key"), "-out", cert)
    return cert


def make_leaf(directory, ca_stem, stem, common_name, alt_names):
    """A server certificate for `alt_names` (subjectAltName syntax) signed by the CA `ca_stem`.
    Returns (cert, key). The CA's key is deleted afterwards: nothing else is ever signed."""
    cnf = os.path.join(directory, stem + ".cnf")
    with open(cnf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = %s\n"
                "[v3_leaf]\nbasicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
                "subjectAltName = %s\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n"
                % (common_name, alt_names))
    key = os.path.join(directory, stem + ".key")
    csr = os.path.join(directory, stem + ".csr")
    cert = os.path.join(directory, stem + ".pem")
    ca_key = os.path.join(directory, ca_stem + ".key")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-config", cnf,
            "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", os.path.join(directory, ca_stem + ".pem"), "-CAkey", ca_key,
            "-set_serial", "0x" + secrets.token_hex(16), "-days", "2", "-sha256",
            "-extfile", cnf, "-extensions", "v3_leaf", "-out", cert)
    os.unlink(ca_key)
    os.unlink(csr)
    return cert, key


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
        self.tmp_dir = None
        self.stop = threading.Event()
        if self.source == "workload":
            self.init_workload()

    # ---- workload identity ----------------------------------------------------

    def init_workload(self):
        a = self.args
        prefix = a.proxy_path.rstrip("/") if a.token_proxy else ""
        self.path_prefix = prefix
        self.path = prefix + "/{tenant}/oauth2/v2.0/token"
        # What the app registration / federated credential in "Entra" holds.
        self.tenant_id = (a.tenant_id or str(uuid.uuid4())).lower()
        self.client_id = (a.client_id or str(uuid.uuid4())).lower()
        self.issuer = a.issuer or "https://oidc.mi-emulator.test/%s/" % uuid.uuid4()
        self.subject = a.subject
        # What the pod is given: the same, unless a mistake was asked for.
        self.export_tenant = str(uuid.uuid4()) if a.wrong_tenant else self.tenant_id
        self.export_client = str(uuid.uuid4()) if a.wrong_client_id else self.client_id
        self.mistake = a.mistake
        self.token_file = None
        self.token_serial = 0
        self.write_lock = threading.Lock()   # one rotation at a time (timer and control endpoint)
        self.ca_file = None
        self.ca_pem = None
        self.base_url = None
        self.stats.update({"rotations": 0, "tls_sni_rejected": 0, "current_assertion": None})

    def sa_token(self, mistake):
        """A projected service-account token as kubelet writes it (unsigned: Entra's signature check
        against the cluster's OIDC keys is not emulated). Returns (text, summary)."""
        now = int(time.time())
        life = self.args.sa_token_lifetime
        iss, sub, aud = self.issuer, self.subject, [AUDIENCE]
        iat, exp = now, now + life
        if mistake == "wrong-issuer":
            iss = "https://oidc.other-cluster.test/%s/" % uuid.uuid4()
        elif mistake == "wrong-subject":
            sub = "system:serviceaccount:default:default"
        elif mistake == "wrong-audience":
            aud = ["https://kubernetes.default.svc.cluster.local"]   # the default service-account token
        elif mistake == "expired":
            iat, exp = now - life - 120, now - 120
        jti = str(uuid.uuid4())
        if mistake == "malformed":
            return "not-a-jwt." + b64url(secrets.token_bytes(24)), {"jti": None, "iss": None, "sub": None, "exp": None}
        parts = sub.split(":")   # system:serviceaccount:<namespace>:<name>
        namespace, account = (parts[2], parts[3]) if len(parts) == 4 else ("", sub)
        header = {"alg": "RS256", "kid": "mi-emulator-" + secrets.token_hex(4)}
        payload = {"aud": aud, "exp": exp, "iat": iat, "iss": iss, "jti": jti,
                   "kubernetes.io": {"namespace": namespace,
                                     "pod": {"name": "workload-" + secrets.token_hex(3), "uid": str(uuid.uuid4())},
                                     "serviceaccount": {"name": account, "uid": str(uuid.uuid4())}},
                   "nbf": iat, "sub": sub}
        text = ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()),
                         b64url(json.dumps(payload, separators=(",", ":")).encode()),
                         b64url(secrets.token_bytes(256))])
        return text, {"jti": jti, "iss": iss, "sub": sub, "exp": exp}

    def write_sa_token(self, mistake=None):
        """Writes a fresh token the way kubelet updates a projected volume: the data goes into a new
        timestamped directory and the `..data` link is swapped atomically, so the file the pod reads
        (`azure-identity-token`, itself a link into `..data`) changes in one step. Where symbolic
        links cannot be made (Windows without the privilege) the file is replaced atomically."""
        with self.write_lock:
            return self._write_sa_token(mistake)

    def _write_sa_token(self, mistake):
        with self.lock:
            if mistake is None:
                mistake = self.mistake
            else:
                self.mistake = mistake
            self.token_serial += 1
            serial = self.token_serial
        text, summary = self.sa_token(mistake)
        d = os.path.join(self.tmp_dir, "tokens")
        os.makedirs(d, exist_ok=True)
        target = os.path.join(d, TOKEN_FILE_NAME)
        stamp = "..%s_%06d" % (time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime()), serial)
        try:
            os.mkdir(os.path.join(d, stamp))
            with open(os.path.join(d, stamp, TOKEN_FILE_NAME), "w") as f:
                f.write(text)
            tmp_link = os.path.join(d, "..data_tmp")
            os.symlink(stamp, tmp_link)
            old = os.readlink(os.path.join(d, "..data")) if os.path.islink(os.path.join(d, "..data")) else None
            os.replace(tmp_link, os.path.join(d, "..data"))
            if not os.path.lexists(target):
                os.symlink(os.path.join("..data", TOKEN_FILE_NAME), target)
            if old and old != stamp:
                shutil.rmtree(os.path.join(d, old), ignore_errors=True)
        except (OSError, NotImplementedError):
            tmp = os.path.join(d, ".%s.tmp" % TOKEN_FILE_NAME)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, target)
        with self.lock:
            if serial > 1:
                self.stats["rotations"] += 1
            self.stats["current_assertion"] = summary
        self.token_file = target
        return summary

    def rotate_loop(self):
        while not self.stop.wait(self.args.rotate_token_every):
            try:
                self.write_sa_token()
            except OSError as e:
                if self.args.verbose:
                    sys.stderr.write("mi-emulator: token rotation failed: %s\n" % e)

    def setup_workload(self):
        """The temporary directory (certificates, token files), the service-account token and the
        server's TLS context."""
        a = self.args
        self.tmp_dir = tempfile.mkdtemp(prefix="mi-emulator-")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if a.token_proxy:
            # The proxy's certificate names only the SNI name, so a client that does not send it
            # (or checks the host name it connected to instead) fails.
            self.ca_file = make_ca(self.tmp_dir, "proxy-ca", "mi-emulator AKS token proxy CA")
            cert, key = make_leaf(self.tmp_dir, "proxy-ca", "proxy", a.sni_name, "DNS:" + a.sni_name)

            def on_sni(sslobj, server_name, context):
                if server_name is None or server_name.lower() != a.sni_name.lower():
                    with self.lock:
                        self.stats["tls_sni_rejected"] += 1
                    return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
                return None

            ctx.sni_callback = on_sni
        else:
            self.ca_file = make_ca(self.tmp_dir, "entra-ca", "mi-emulator Entra CA")
            cert, key = make_leaf(self.tmp_dir, "entra-ca", "entra", "localhost", "DNS:localhost, IP:127.0.0.1")
        ctx.load_cert_chain(cert, key)
        with open(self.ca_file) as f:
            self.ca_pem = f.read()
        self.write_sa_token()
        return ctx

    def entra_error_body(self, error, message, aadsts=None, correlation_id=None):
        """Entra's error shape: the description carries the code, trace, correlation and time."""
        now = int(time.time())
        trace_id = str(uuid.uuid4())
        if not (correlation_id and GUID_RE.match(correlation_id)):
            correlation_id = str(uuid.uuid4())
        desc = ("AADSTS%d: %s" % (aadsts, message)) if aadsts is not None else message
        desc += "\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s" % (trace_id, correlation_id, entra_time(now))
        body = {"error": error, "error_description": desc, "error_codes": [aadsts] if aadsts is not None else [],
                "timestamp": entra_time(now), "trace_id": trace_id, "correlation_id": correlation_id}
        if aadsts is not None and self.base_url:
            body["error_uri"] = "%s/error?code=%d" % (self.base_url, aadsts)
        return body

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
        self.stop.set()
        if self.tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
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
        elif s == "workload":
            env += [("AZURE_AUTHORITY_HOST", "https://127.0.0.1:%d/" % port),
                    ("AZURE_TENANT_ID", self.export_tenant), ("AZURE_CLIENT_ID", self.export_client),
                    ("AZURE_FEDERATED_TOKEN_FILE", self.token_file)]
            if self.args.token_proxy:
                env += [("AZURE_KUBERNETES_TOKEN_PROXY", "https://127.0.0.1:%d%s" % (port, self.path_prefix)),
                        ("AZURE_KUBERNETES_SNI_NAME", self.args.sni_name)]
                if self.args.proxy_ca_data:
                    env.append(("AZURE_KUBERNETES_CA_DATA", self.ca_pem))
                else:
                    env.append(("AZURE_KUBERNETES_CA_FILE", self.ca_file))
            else:
                env.append(("MI_EMULATOR_CA_FILE", self.ca_file))
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
        if self.emu.source == "workload":
            # As Entra: never cached, a request ID, and the client's request ID back when asked.
            self.send_header("Cache-Control", "no-store, no-cache")
            self.send_header("Pragma", "no-cache")
            trace = body.get("trace_id") if isinstance(body, dict) else None
            self.send_header("x-ms-request-id", trace or str(uuid.uuid4()))
            crid = self.header("client-request-id")
            if crid and (self.header("return-client-request-id") or "").lower() == "true" and GUID_RE.match(crid):
                self.send_header("client-request-id", crid)
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

    def fail(self, status, code, message, extra_headers=(), aadsts=None):
        if self.emu.source == "workload":
            body = self.emu.entra_error_body(code, message, aadsts, self.header("client-request-id"))
        else:
            body = self.emu.error_body(code, message)
        self.send(status, body, extra_headers)

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
        if parsed.path == "/__emulator/rotate" and emu.source == "workload":
            self.control_rotate(parsed.query)
            return
        with emu.lock:
            emu.stats["requests"] += 1
        self.tenant = None
        if emu.source == "workload":
            m = re.match(r"^%s/([^/]+)/oauth2/v2\.0/token$" % re.escape(emu.path_prefix), parsed.path)
            if m:
                self.tenant = urllib.parse.unquote(m.group(1))
            known = m is not None
        else:
            # The real endpoints accept the token path with a trailing slash (MSAL Node sends one).
            known = parsed.path.rstrip("/") == emu.path
        if not known:
            with emu.lock:
                emu.stats["unexpected"] += 1
            # Read the body first: closing a socket with unread data resets the connection, and
            # the client would then see no answer at all instead of this 404.
            self.read_body()
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
        recorded = dict(body_params)
        if emu.source == "workload" and "client_assertion" in recorded:
            recorded["client_assertion"] = "<redacted: %d bytes>" % len(recorded["client_assertion"])
        last = {"method": self.command, "path": parsed.path, "query": dict(query),
                "header_names": sorted({k.lower() for k in self.headers.keys()}),
                "body_params": recorded}
        if emu.source == "workload":
            last["tenant"] = self.tenant
            last["headers"] = {k: self.header(k) for k in WORKLOAD_RECORDED_HEADERS if self.header(k) is not None}
            last["assertion"] = None
        with emu.lock:
            emu.stats["token_requests"] += 1
            emu.stats["last_token_request"] = last
            inject = emu.stats["failures"] < emu.args.fail
            if inject:
                emu.stats["failures"] += 1
        if emu.args.delay_ms > 0:
            time.sleep(emu.args.delay_ms / 1000.0)
        if inject:
            self.inject_failure()
            return
        getattr(self, "serve_" + emu.source)(query, body_params, ctype)

    def control_rotate(self, query):
        """POST /__emulator/rotate[?mistake=NAME]: writes a new service-account token now (with
        that mistake from then on; `none` for a good one). Not counted as a request."""
        if self.command != "POST":
            self.send(405, {"error": "POST /__emulator/rotate"})
            return
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        mistake = params.get("mistake")
        if mistake is not None and mistake not in MISTAKES:
            self.send(400, {"error": "mistake must be one of: " + ", ".join(MISTAKES)})
            return
        summary = self.emu.write_sa_token(mistake)
        with self.emu.lock:
            rotations = self.emu.stats["rotations"]
        self.send(200, {"rotations": rotations, "current_assertion": summary})

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


    def serve_workload(self, query, body_params, ctype):
        """Microsoft Entra ID's v2.0 token endpoint for a client-credentials grant with a federated
        client assertion, checked in the order Entra reports problems: tenant, method, body,
        grant, client, scope, credential, assertion time, federated credential match."""
        emu = self.emu
        tenant = self.tenant
        if not (GUID_RE.match(tenant) or DOMAIN_RE.match(tenant)):
            self.fail(400, "invalid_request", "Specified tenant identifier '%s' is neither a valid DirectoryName "
                      "nor a valid ObjectId." % tenant, aadsts=900023)
            return
        if tenant.lower() not in (emu.tenant_id, (emu.args.tenant_domain or "").lower()):
            self.fail(400, "invalid_request", "Tenant '%s' not found. Check to make sure you have the correct "
                      "tenant ID and are signing into the correct cloud. Check with your subscription "
                      "administrator, this may happen if there are no active subscriptions for the tenant."
                      % tenant, aadsts=90002)
            return
        if self.command != "POST":
            self.fail(400, "invalid_request", "The endpoint only accepts POST, OPTIONS requests. Received a %s "
                      "request." % self.command, aadsts=900561)
            return
        if ctype != "application/x-www-form-urlencoded":
            self.fail(400, "invalid_request", "The request body must contain the following parameter: "
                      "'grant_type'. (mi-emulator: the body must be application/x-www-form-urlencoded, "
                      "got %r)" % ctype, aadsts=900144)
            return
        names = [k for k, _ in body_params]
        dups = sorted({k for k in names if names.count(k) > 1})
        if dups:
            self.fail(400, "invalid_request", "mi-emulator: duplicate form parameter(s): %s" % ", ".join(dups),
                      aadsts=900144)
            return
        params = dict(body_params)
        if "resource" in params:
            self.fail(400, "invalid_request", "The 'resource' request parameter is not supported.", aadsts=901002)
            return
        extra = sorted(k for k in params if k not in WORKLOAD_FIELDS)
        if extra:
            self.fail(400, "invalid_request", "mi-emulator: unexpected form parameter(s): %s (a workload "
                      "identity client sends only %s)" % (", ".join(extra), ", ".join(WORKLOAD_FIELDS)),
                      aadsts=900144)
            return
        for field in ("grant_type", "client_id", "scope"):
            if not params.get(field):
                self.fail(400, "invalid_request", "The request body must contain the following parameter: "
                          "'%s'." % field, aadsts=900144)
                return
        if params["grant_type"] != "client_credentials":
            self.fail(400, "unsupported_grant_type", "The app requested an unsupported grant type '%s'."
                      % params["grant_type"], aadsts=70003)
            return
        if params["client_id"].lower() != emu.client_id:
            self.fail(400, "unauthorized_client", "Application with identifier '%s' was not found in the "
                      "directory '%s'. This can happen if the application has not been installed by the "
                      "administrator of the tenant or consented to by any user in the tenant. You may have "
                      "sent your authentication request to the wrong tenant." % (params["client_id"], tenant),
                      aadsts=700016)
            return
        scope = params["scope"]
        if " " in scope or not scope.endswith("/.default") or scope == "/.default":
            self.fail(400, "invalid_scope", "The provided value for scope %s is not valid. Client credential "
                      "flows must have a scope value with /.default suffixed to the resource identifier "
                      "(application ID URI)." % scope, aadsts=1002012)
            return
        if not params.get("client_assertion"):
            self.fail(401, "invalid_client", "The request body must contain the following parameter: "
                      "'client_assertion' or 'client_secret'.", aadsts=7000218)
            return
        if params.get("client_assertion_type") != ASSERTION_TYPE:
            self.fail(400, "invalid_request", "mi-emulator: client_assertion_type must be %s" % ASSERTION_TYPE,
                      aadsts=900144)
            return
        claims = params.get("claims")
        if claims is not None:
            try:
                ok = isinstance(json.loads(claims), dict)
            except ValueError:
                ok = False
            if not ok:
                self.fail(400, "invalid_request", "The provided value for the input parameter 'claims' is not "
                          "valid. (mi-emulator: it must be a JSON object)", aadsts=70011)
                return
        payload = self.parse_assertion(params["client_assertion"])
        if payload is None:
            return
        now = int(time.time())
        exp, nbf = payload["exp"], payload.get("nbf", payload.get("iat", now))
        if exp <= now or (isinstance(nbf, (int, float)) and nbf > now + ASSERTION_SKEW):
            self.fail(401, "invalid_client", "Client assertion is not within its valid time range. Current "
                      "time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation "
                      "at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-"
                      "credentials ." % (iso_time(now), iso_time(nbf if isinstance(nbf, (int, float)) else now),
                                         iso_time(exp)), aadsts=700024)
            return
        aud = payload.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if payload["iss"] != emu.issuer or payload["sub"] != emu.subject or AUDIENCE not in auds:
            self.fail(400, "invalid_request", "No matching federated identity record found for presented "
                      "assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'. "
                      "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
                      % (payload["iss"], payload["sub"], ", ".join(str(a) for a in auds)), aadsts=70021)
            return
        self.issue_workload(scope[:-len("/.default")], params)

    def parse_assertion(self, text):
        """The assertion's payload when it is a JWT with string iss and sub and a numeric exp (the
        signature is not checked), else None after answering AADSTS50027."""
        payload = None
        parts = text.split(".")
        if len(parts) == 3 and all(parts):
            try:
                header = json.loads(b64url_decode(parts[0]))
                payload = json.loads(b64url_decode(parts[1]))
                if not (isinstance(header, dict) and isinstance(payload, dict)):
                    payload = None
            except (ValueError, TypeError):
                payload = None
        if payload is not None:
            with self.emu.lock:
                last = self.emu.stats["last_token_request"]
                if last is not None:
                    last["assertion"] = {k: payload.get(k) for k in ("jti", "iss", "sub", "aud", "exp")}
        if (payload is None or not isinstance(payload.get("iss"), str) or not isinstance(payload.get("sub"), str)
                or not isinstance(payload.get("exp"), (int, float)) or isinstance(payload.get("exp"), bool)):
            self.fail(400, "invalid_request", "JWT token is invalid or malformed. (mi-emulator: the client "
                      "assertion must be a JWT whose payload has iss, sub and a numeric exp)", aadsts=50027)
            return None
        return payload

    def issue_workload(self, resource, params):
        emu = self.emu
        now = int(time.time())
        lifetime = emu.args.lifetime
        identity = {"appid": emu.client_id, "azp": emu.client_id, "tid": emu.tenant_id, "idtyp": "app",
                    "iss": "https://sts.windows.net/%s/" % emu.tenant_id}
        try:
            cc = json.loads(params.get("claims") or "{}").get("access_token", {}).get("xms_cc", {}).get("values")
        except (ValueError, AttributeError):
            cc = None
        if isinstance(cc, list):
            identity["xms_cc"] = cc
        token = emu.make_token(resource, identity, now + lifetime)
        body = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
        if emu.args.refresh_in is not None:
            body["refresh_in"] = emu.args.refresh_in
        with emu.lock:
            emu.stats["tokens_issued"] += 1
        self.send(200, body)


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
    p = argparse.ArgumentParser(
        description="Local emulator of the Azure managed identity endpoints, and of Microsoft Entra ID's "
                    "token endpoint for AKS workload identity (--source workload). Loopback only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""workload identity (--source workload):
  Serves POST /{tenant}/oauth2/v2.0/token over HTTPS with a CA made at start, and writes a
  projected service-account token file. Exports AZURE_AUTHORITY_HOST=https://127.0.0.1:PORT/,
  AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE and MI_EMULATOR_CA_FILE (the CA
  a client must trust). With --token-proxy it is the AKS identity binding token proxy instead and
  exports AZURE_KUBERNETES_TOKEN_PROXY, AZURE_KUBERNETES_SNI_NAME and AZURE_KUBERNETES_CA_FILE
  (or AZURE_KUBERNETES_CA_DATA) in place of MI_EMULATOR_CA_FILE.
  The usual mistakes, and what the client then gets (see docs/workload_identity.md):
    --wrong-client-id      AZURE_CLIENT_ID is not the app           -> 400 AADSTS700016
    --wrong-tenant         AZURE_TENANT_ID names no tenant          -> 400 AADSTS90002
    --wrong-issuer         token's iss is not the federated one     -> 400 AADSTS70021
    --wrong-subject        token's sub is not the federated one     -> 400 AADSTS70021
    --wrong-audience       token's aud lacks api://AzureADTokenExchange -> 400 AADSTS70021
    --expired-assertion    token's exp is in the past               -> 401 AADSTS700024
    --malformed-assertion  the token file is not a JWT              -> 400 AADSTS50027
  POST /__emulator/rotate[?mistake=none|wrong-issuer|wrong-subject|wrong-audience|expired|malformed]
  writes a new token file at once (kubelet's ..data link swap).""")
    p.add_argument("--source", required=True, choices=sorted(SOURCES))
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    p.add_argument("--env-file", help="also write the export lines to this file")
    p.add_argument("--default-client-id", help="Azure ML: export DEFAULT_IDENTITY_CLIENT_ID")
    p.add_argument("--arc-token-dir", default="/var/opt/azcmagent/tokens",
                   help="Azure Arc: directory of the key file (created if missing)")
    p.add_argument("--expires-on-format", choices=["epoch", "iso", "ml-ampm", "ml-24h"],
                   help="form of expires_on (default: ml-ampm for azureml, epoch otherwise)")
    p.add_argument("--lifetime", type=int,
                   help="token lifetime in seconds (default 86400; 3599 for workload, as Entra)")
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
    w = p.add_argument_group("workload identity (--source workload)")
    w.add_argument("--tenant-id", help="the tenant (default: a random GUID)")
    w.add_argument("--tenant-domain", help="also accept this domain name as the tenant (e.g. contoso.onmicrosoft.com)")
    w.add_argument("--client-id", help="the app's client ID, a GUID (default: random)")
    w.add_argument("--issuer", help="the federated credential's issuer (default https://oidc.mi-emulator.test/<guid>/)")
    w.add_argument("--subject", default="system:serviceaccount:default:workload-identity-sa",
                   help="the federated credential's subject (default: %(default)s)")
    w.add_argument("--sa-token-lifetime", type=int, default=3600, metavar="S",
                   help="lifetime of the service-account token written (default %(default)s)")
    w.add_argument("--rotate-token-every", type=float, metavar="S", help="write a new token file every S seconds")
    w.add_argument("--token-proxy", action="store_true",
                   help="be the AKS identity binding token proxy (AZURE_KUBERNETES_TOKEN_PROXY)")
    w.add_argument("--proxy-path", default="", metavar="PREFIX",
                   help="--token-proxy: path prefix of the proxy URL (e.g. /tokenproxy; default none)")
    w.add_argument("--sni-name", default="aks-proxy.test",
                   help="--token-proxy: the only name on its certificate and the SNI it requires (default %(default)s)")
    w.add_argument("--proxy-ca-data", action="store_true",
                   help="--token-proxy: export the CA as AZURE_KUBERNETES_CA_DATA (PEM text) instead of a file")
    w.add_argument("--wrong-client-id", action="store_true", help="export an AZURE_CLIENT_ID that is not the app")
    w.add_argument("--wrong-tenant", action="store_true", help="export an AZURE_TENANT_ID that is no tenant")
    m = w.add_mutually_exclusive_group()
    for flag, name, what in (("--wrong-issuer", "wrong-issuer", "an iss the federated credential does not hold"),
                             ("--wrong-subject", "wrong-subject", "a sub the federated credential does not hold"),
                             ("--wrong-audience", "wrong-audience", "an aud without api://AzureADTokenExchange"),
                             ("--expired-assertion", "expired", "an exp in the past"),
                             ("--malformed-assertion", "malformed", "text that is not a JWT")):
        m.add_argument(flag, dest="mistake", action="store_const", const=name,
                       help="write service-account tokens with %s" % what)
    p.set_defaults(mistake="none")
    args = p.parse_args(argv)
    if args.lifetime is None:
        args.lifetime = 3599 if args.source == "workload" else 86400
    if args.lifetime <= 0:
        p.error("--lifetime must be positive")
    workload_only = [f for f, v in (("--token-proxy", args.token_proxy), ("--tenant-id", args.tenant_id),
                                    ("--tenant-domain", args.tenant_domain), ("--client-id", args.client_id),
                                    ("--issuer", args.issuer), ("--rotate-token-every", args.rotate_token_every),
                                    ("--wrong-client-id", args.wrong_client_id), ("--wrong-tenant", args.wrong_tenant),
                                    ("a token mistake", args.mistake != "none")) if v]
    if workload_only and args.source != "workload":
        p.error("%s needs --source workload" % ", ".join(workload_only))
    if (args.proxy_path or args.proxy_ca_data) and not args.token_proxy:
        p.error("--proxy-path and --proxy-ca-data need --token-proxy")
    if args.proxy_path and (not args.proxy_path.startswith("/") or "?" in args.proxy_path or "#" in args.proxy_path):
        p.error("--proxy-path must start with / and hold no query or fragment")
    for flag, v in (("--tenant-id", args.tenant_id), ("--client-id", args.client_id)):
        if v is not None and not GUID_RE.match(v):
            p.error("%s must be a GUID" % flag)
    if args.tenant_domain is not None and not DOMAIN_RE.match(args.tenant_domain):
        p.error("--tenant-domain must be a domain name")
    if not DOMAIN_RE.match(args.sni_name):
        p.error("--sni-name must be a DNS name")
    if args.sa_token_lifetime <= 0 or (args.rotate_token_every is not None and args.rotate_token_every <= 0):
        p.error("--sa-token-lifetime and --rotate-token-every must be positive")
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
        if args.source == "workload":
            tls = emu.setup_workload()
        if args.source == "arc":
            emu.setup_arc()
        server = Server(("127.0.0.1", args.port), emu, tls)
    except (OSError, subprocess.CalledProcessError, ssl.SSLError) as e:
        emu.cleanup()
        detail = getattr(e, "stderr", None)
        sys.stderr.write("mi-emulator: cannot start: %s%s\n"
                         % (e, (": " + detail.decode("utf-8", "replace").strip()) if detail else ""))
        return 1
    port = server.server_address[1]
    if args.source == "workload":
        emu.base_url = "https://127.0.0.1:%d" % port
        if args.rotate_token_every:
            threading.Thread(target=emu.rotate_loop, daemon=True).start()
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
