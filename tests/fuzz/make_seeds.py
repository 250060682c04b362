#!/usr/bin/env python3
"""Writes the seed corpus under tests/fuzz/corpus/<target>/seed-*.

Real response shapes of every source (spec/SAMPLES.md) plus malformed ones. Run it
again after changing a seed; it rewrites seed-* files only (crash-* reproducers and
anything else in the corpus folders are left alone) and removes stale seed-* files.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- bodies (SAMPLES.md) ---------------------------------------------------------

IMDS = ('{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOi...","client_id":"9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10",'
        '"expires_in":"86399","expires_on":"1796241097","ext_expires_in":"86399","not_before":"1796154397",'
        '"resource":"https://management.azure.com/","token_type":"Bearer"}')
APP_SERVICE = ('{"access_token":"eyJ0eXAi...","expires_on":"1796241097","resource":"https://vault.azure.net",'
               '"token_type":"Bearer","client_id":"5E29463D-71DA-4FE0-8E69-999B57DB23B0"}')
APP_SERVICE_WIN = ('{"access_token":"eyJ0eXAi...","expires_on":"2026-12-02T19:51:37.0000000+00:00",'
                   '"resource":"https://vault.azure.net","token_type":"Bearer","client_id":"5E29463D-..."}')
AZURE_ML_WIN = ('{"access_token":"eyJ0eXAi...","expires_on":"12/2/2026 7:51:37 PM +00:00",'
                '"resource":"https://vault.azure.net","token_type":"Bearer"}')
AZURE_ML_LINUX = ('{"access_token":"eyJ0eXAi...","expires_on":"12/02/2026 19:51:37 +00:00",'
                  '"resource":"https://vault.azure.net","token_type":"Bearer"}')
CLOUD_SHELL = ('{"access_token":"eyJ0eXAi...","refresh_token":"","expires_in":"3599","expires_on":"1796241097",'
               '"not_before":"1796237197","resource":"https://management.azure.com/","token_type":"Bearer"}')
SERVICE_FABRIC = ('{"token_type":"Bearer","access_token":"eyJ0eXAi...","expires_on":1796241097,'
                  '"resource":"https://vault.azure.net/"}')
REFRESH_IN = '{"access_token":"eyJ0eXAi...","expires_in":86399,"refresh_in":43199,"token_type":"Bearer"}'
ARC_ECHO = ('{"access_token":"eyJ0eXAi...","expires_in":"86399","expires_on":"1796241097",'
            '"client_id":"9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10","object_id":"0f9f1c3e-1111-2222-3333-444455556666",'
            '"msi_res_id":"/subscriptions/x/resourcegroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z",'
            '"resource":"https://management.azure.com/","token_type":"Bearer"}')
ERR_FLAT = '{"error":"invalid_request","error_description":"Identity not found"}'
ERR_FLAT_FULL = ('{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named '
                 'https://x was not found...","error_codes":[500011],"timestamp":"2026-11-28 10:00:00Z",'
                 '"trace_id":"...","correlation_id":"0b2c7a5e-..."}')
ERR_NESTED_SF = ('{"error":{"correlationId":"7f30f4d3-0f3a-41e0-a417-527f21b3848f","code":"SecretHeaderNotFound",'
                 '"message":"Secret is not found in the request headers."}}')
ERR_NESTED = '{"error":{"code":"BadRequest","message":"Invalid resource"}}'
ERR_APP_SERVICE = '{"statusCode":400,"message":"No managed identity found","correlationId":"a1b2c3"}'
DOCKER_HTML = ('<html><head><title>403 Forbidden</title></head><body>A socket operation was attempted to an '
               'unreachable network.</body></html>')

SUCCESS = {
    "imds": IMDS, "app-service": APP_SERVICE, "app-service-windows": APP_SERVICE_WIN,
    "azure-ml-windows": AZURE_ML_WIN, "azure-ml-linux": AZURE_ML_LINUX, "cloud-shell": CLOUD_SHELL,
    "service-fabric": SERVICE_FABRIC, "refresh-in": REFRESH_IN, "arc-leg2-echo": ARC_ECHO,
}
ERRORS = {
    "error-flat": ERR_FLAT, "error-flat-full": ERR_FLAT_FULL, "error-nested-sf": ERR_NESTED_SF,
    "error-nested": ERR_NESTED, "error-app-service": ERR_APP_SERVICE,
}


def json_seeds():
    s = {}
    for k, v in SUCCESS.items():
        s["ok-" + k] = v
        s["ok-" + k + "-pretty"] = v.replace(",", ",\n  ").replace("{", "{\n  ", 1).replace("}", "\n}")
    for k, v in ERRORS.items():
        s[k] = v
    s.update({
        "html-docker-403": DOCKER_HTML,
        "text-not-found": "Not Found",
        "text-throttled": "Too many requests",
        "empty": "",
        "whitespace": " \r\n\t ",
        "scalars-array": '[null,true,false,0,-0,1.5e+10,-2E-3,"",{}]',
        "unicode-escapes": '{"k":"\\u00e9\\u20ac\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r","\\u0000":1}',
        "utf8-raw": '{"k":"caf\u00e9 \u20ac \U0001F600"}',
        "duplicate-keys": '{"access_token":"a","access_token":"b","expires_in":1}',
        "numbers-strings": '{"access_token":"x","expires_in":"3600","expires_on":"1.7e9","refresh_in":"10"}',
        "expires-in-only": '{"access_token":"x","expires_in":3600}',
        "expires-on-bad-in-ok": '{"access_token":"x","expires_on":"tomorrow","expires_in":"60"}',
        "no-expiry": '{"access_token":"x"}',
        "empty-token": '{"access_token":"","expires_in":1}',
        "token-not-string": '{"access_token":123,"expires_in":1}',
        "expires-far": '{"access_token":"x","expires_on":"9999-12-31T23:59:59Z"}',
        "expires-past": '{"access_token":"x","expires_on":1}',
        "error-code-number": '{"error":{"code":500,"message":"boom"}}',
        "depth-64": "[" * 64 + "]" * 64,
        "depth-65": "[" * 65 + "]" * 65,
        "depth-64-objects": '{"a":' * 64 + "1" + "}" * 64,
        # malformed
        "bad-trailing-comma": '{"a":1,}',
        "bad-leading-zero": '{"a":01}',
        "bad-single-quotes": "{'a':1}",
        "bad-comment": '{"a":1 /* c */}',
        "bad-nan": '{"a":NaN}',
        "bad-truncated": IMDS[:len(IMDS) // 2],
        "bad-two-documents": "{} {}",
        "bad-lone-high-surrogate": '"\\ud800"',
        "bad-lone-low-surrogate": '"\\udc00"',
        "bad-high-then-bad-low": '"\\ud800\\u0041"',
        "bad-escape": '"\\x41"',
        "bad-control-in-string": '"a\x01b"',
        "bad-literal": "nul",
        "bad-minus": "-",
        "bad-exponent": "1e",
        "bad-fraction": "1.",
    })
    b = {k: v.encode("utf-8") for k, v in s.items()}
    b.update({
        "bad-utf8-overlong": b'"\xc0\xaf"',
        "bad-utf8-surrogate": b'"\xed\xa0\x80"',
        "bad-utf8-above-max": b'"\xf4\x90\x80\x80"',
        "bad-utf8-truncated": b'"\xe2\x82',
        "bad-bom": b"\xef\xbb\xbf{}",
    })
    return b


# ---- HTTP responses -----------------------------------------------------------------

def response(status_line, headers, body=b"", length=True):
    if isinstance(body, str):
        body = body.encode("utf-8")
    h = list(headers)
    if length:
        h.append(("Content-Length", str(len(body))))
    head = status_line + "\r\n" + "".join("%s: %s\r\n" % kv for kv in h) + "\r\n"
    return head.encode("latin-1") + body


def chunked(status_line, headers, body, sizes, trailer=""):
    if isinstance(body, str):
        body = body.encode("utf-8")
    out = b""
    pos = 0
    for n in sizes:
        part = body[pos:pos + n]
        pos += n
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    if pos < len(body):
        out += b"%x\r\n" % (len(body) - pos) + body[pos:] + b"\r\n"
    out += b"0\r\n" + trailer.encode() + b"\r\n"
    head = status_line + "\r\n" + "".join("%s: %s\r\n" % kv for kv in headers) + "Transfer-Encoding: chunked\r\n\r\n"
    return head.encode("latin-1") + out


JSON_CT = [("Content-Type", "application/json; charset=utf-8")]


def http_seeds():
    s = {}
    for k, v in SUCCESS.items():
        s["ok-" + k] = response("HTTP/1.1 200 OK", JSON_CT + [("Server", "Microsoft-IIS/10.0")], v)
    for k, v in ERRORS.items():
        s[k] = response("HTTP/1.1 400 Bad Request", JSON_CT + [("x-ms-request-id", "0b2c7a5e")], v)
    s.update({
        "ok-imds-chunked": chunked("HTTP/1.1 200 OK", JSON_CT, IMDS, [1, 17, 100]),
        "ok-chunked-ext-trailer": chunked("HTTP/1.1 200 OK", JSON_CT, APP_SERVICE, [64],
                                          trailer="X-Checksum: abc\r\n").replace(b"40\r\n", b"40;name=value\r\n", 1),
        "ok-chunked-upper-hex": chunked("HTTP/1.1 200 OK", [], "x" * 300, [0x12C]).replace(b"12c", b"12C"),
        "ok-close-delimited": response("HTTP/1.1 200 OK", JSON_CT + [("Connection", "close")], SERVICE_FABRIC,
                                       length=False),
        "ok-http10": response("HTTP/1.0 200 OK", JSON_CT, CLOUD_SHELL, length=False),
        "ok-100-continue": b"HTTP/1.1 100 Continue\r\n\r\n" + response("HTTP/1.1 200 OK", JSON_CT, IMDS),
        "ok-103-early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + response("HTTP/1.1 200 OK", [], "{}"),
        "ok-202": response("HTTP/1.1 202 Accepted", JSON_CT, APP_SERVICE),
        "ok-no-reason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
        "ok-bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
        "ok-cl-list-equal": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 02\r\n\r\n{}",
        "ok-trailing-bytes": response("HTTP/1.1 200 OK", [], "{}") + b"HTTP/1.1 200 OK\r\n\r\nextra",
        "arc-leg1-401": response("HTTP/1.1 401 Unauthorized",
                                 [("WWW-Authenticate",
                                   "Basic realm=/var/opt/azcmagent/tokens/4f7b0a36-5c0e-4b9d-8a62-0a0f3f5f3a11.key")]),
        "imds-404-text": response("HTTP/1.1 404 Not Found", [("Content-Type", "text/plain")], "Not Found"),
        "imds-410-empty": response("HTTP/1.1 410 Gone", [], ""),
        "imds-429-retry-after": response("HTTP/1.1 429 Too Many Requests", [("Retry-After", "5")], "Too many requests"),
        "imds-503-retry-after-date": response("HTTP/1.1 503 Service Unavailable",
                                              [("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT")], ""),
        "docker-403-html": response("HTTP/1.1 403 Forbidden", [("Content-Type", "text/html")], DOCKER_HTML),
        "status-204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        "status-304": b"HTTP/1.1 304 Not Modified\r\n\r\n",
        "head-tab-value": b"HTTP/1.1 200 OK\r\nX-A: \t a\tb \t\r\nContent-Length: 0\r\n\r\n",
        # malformed framing and syntax
        "bad-te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "bad-cl-conflict": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "bad-cl-plus": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        "bad-cl-empty": b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        "bad-cl-huge": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "bad-cl-short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        "bad-te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "bad-te-http10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "bad-chunk-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "bad-chunk-too-long": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "bad-chunk-no-end": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "bad-chunk-ext-ctl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\x01\r\nx\r\n0\r\n\r\n",
        "bad-trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n",
        "bad-obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "bad-header-space-name": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
        "bad-header-no-colon": b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        "bad-header-nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
        "bad-header-bare-cr": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
        "bad-status-600": b"HTTP/1.1 600 Nope\r\n\r\n",
        "bad-status-099": b"HTTP/1.1 099 Nope\r\n\r\n",
        "bad-status-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        "bad-status-letters": b"HTTP/1.1 2x0 OK\r\n\r\n",
        "bad-status-http2": b"HTTP/2 200\r\n\r\n",
        "bad-status-http12": b"HTTP/1.2 200 OK\r\n\r\n",
        "bad-http09": b"{\"access_token\":\"x\"}",
        "bad-status-ctl": b"HTTP/1.1 200 O\x01K\r\n\r\n",
        "bad-eof-in-head": b"HTTP/1.1 200 OK\r\nContent-Le",
        "bad-empty": b"",
        "bad-head-too-large": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
        "bad-head-many-lines": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 700 + b"\r\n",
        "bad-body-too-large-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 8193\r\n\r\n",
        "bad-body-too-large-close": b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 8300,
        "bad-body-too-large-chunked": chunked("HTTP/1.1 200 OK", [], "c" * 8300, [1000] * 9),
        "bad-chunk-size-line-long": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 4100 + b"\r\n",
    })
    return s


# ---- expires_on --------------------------------------------------------------------

def expires_on_seeds():
    vals = {
        "epoch": "1796241097", "epoch-fraction": "1796241097.5", "epoch-exponent": "1.796241097e9",
        "epoch-leading-zeros": "0001796241097", "epoch-zero": "0", "epoch-max": "253402300799",
        "iso-7-fraction-offset": "2026-12-02T19:51:37.0000000+00:00", "iso-z": "2026-12-02T19:51:37Z",
        "iso-no-zone": "2026-12-02T19:51:37", "iso-space": "2026-12-02 19:51:37",
        "iso-negative-offset": "2026-12-02T19:51:37-05:30", "iso-offset-no-colon": "2026-12-02T19:51:37+0100",
        "iso-lower-t-z": "2026-12-02t19:51:37z", "iso-space-offset": "2026-12-02 19:51:37 +00:00",
        "iso-leap-day": "2024-02-29T00:00:00Z", "iso-max": "9999-12-31T23:59:59Z", "iso-epoch": "1970-01-01T00:00:00Z",
        "us-pm-offset": "12/2/2026 7:51:37 PM +00:00", "us-24h-offset": "12/02/2026 19:51:37 +00:00",
        "us-am": "12/2/2026 12:05:00 AM", "us-pm-noon": "1/1/2027 12:00:00 PM", "us-no-offset": "1/1/2027 00:00:00",
        "us-lower-pm": "3/4/2026 1:02:03 pm -08:00",
        # malformed
        "bad-empty": "", "bad-negative": "-1", "bad-space-prefix": " 1796241097", "bad-hex": "0x10",
        "bad-huge-exponent": "1e100000", "bad-nan": "NaN", "bad-offset-24": "2026-12-02T19:51:37+24:00",
        "bad-fraction-empty": "2026-12-02T19:51:37.Z", "bad-before-epoch": "1969-12-31T23:59:59Z",
        "bad-epoch-shifted": "1970-01-01T00:00:00+00:01", "bad-feb-30": "2/30/2024 1:00:00 AM",
        "bad-month-13": "13/1/2026 1:00:00", "bad-hour-13-pm": "1/1/2026 13:00:00 PM", "bad-year-10000":
        "10000-01-01T00:00:00Z", "bad-sec-60": "2026-12-02T19:51:60Z", "bad-trailing": "2026-12-02T19:51:37Zx",
        "bad-epoch-overflow": "99999999999999999999", "bad-date-only": "2026-12-02", "bad-tomorrow": "tomorrow",
    }
    return {k: v.encode() for k, v in vals.items()}


# ---- WWW-Authenticate values --------------------------------------------------------

def arc_realm_seeds():
    key = "/var/opt/azcmagent/tokens/4f7b0a36-5c0e-4b9d-8a62-0a0f3f5f3a11.key"
    vals = {
        "linux": "Basic realm=" + key,
        "quoted": 'Basic realm="' + key + '"',
        "quoted-params": 'Basic realm="' + key + '", charset="UTF-8"',
        "unquoted-params": "Basic realm=" + key + ", charset=UTF-8",
        "lowercase": "basic REALM=" + key,
        "tab-after-basic": "Basic\trealm=" + key,
        "windows": "Basic realm=C:\\ProgramData\\AzureConnectedMachineAgent\\Tokens\\4f7b0a36.key",
        "dotdot": "Basic realm=/var/opt/azcmagent/tokens/../../../etc/shadow.key",
        # malformed
        "bad-empty": "", "bad-blank": "   ", "bad-bearer": 'Bearer realm="x"', "bad-negotiate": "Negotiate",
        "bad-no-realm": "Basic", "bad-basic-space": "Basic ", "bad-realm-empty": "Basic realm=",
        "bad-realm-empty-quoted": 'Basic realm=""', "bad-unterminated": 'Basic realm="/var/opt/x.key',
        "bad-basicrealm": "Basicrealm=/x.key", "bad-comma-only": "Basic realm=,",
    }
    b = {k: v.encode() for k, v in vals.items()}
    # Header lines (used as such by mode c of the target).
    b["lines-two-headers"] = ("WWW-Authenticate: Negotiate\r\nWWW-Authenticate: Basic realm=" + key).encode()
    b["lines-lowercase-name"] = ("www-authenticate: Basic realm=" + key).encode()
    return b


TARGETS = {"json": json_seeds, "http": http_seeds, "expires_on": expires_on_seeds, "arc_realm": arc_realm_seeds}


def main():
    for target, make in TARGETS.items():
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        seeds = make()
        for name in os.listdir(folder):
            if name.startswith("seed-") and name[len("seed-"):] not in seeds:
                os.remove(os.path.join(folder, name))
        for name, data in sorted(seeds.items()):
            with open(os.path.join(folder, "seed-" + name), "wb") as f:
                f.write(data)
        print("%s: %d seeds" % (target, len(seeds)), file=sys.stderr)


if __name__ == "__main__":
    main()
