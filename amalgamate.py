#!/usr/bin/env python3
"""Builds the single header managed_identity.hpp from the parts in src/.

The parts are concatenated in the order of PARTS below. Each part also compiles
on its own (so clangd and clang-tidy can read it): it starts with `#pragma once`
and includes the parts it uses with `#include "part.hpp"`. Those two kinds of
line are dropped here, since the order of PARTS already puts every part after
the ones it uses (an include of a later part is an error). The implementation
parts are wrapped in the MI_IMPLEMENTATION gate here, not in a part, so no part
opens a conditional another part closes. Every file in src/ must be listed
exactly once, and the output is deterministic (no dates), so `--check` can tell
whether the committed header is in sync with its parts.

    python3 amalgamate.py          # rewrite managed_identity.hpp
    python3 amalgamate.py --check  # exit 1 if the committed header differs
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(ROOT, "src")
OUT = os.path.join(ROOT, "managed_identity.hpp")

# Declarations first (light, OS-free), then the implementation behind MI_IMPLEMENTATION
# (from IMPLEMENTATION_FIRST to IMPLEMENTATION_LAST).
PARTS = [
    "header_top.hpp",      # map comment, configuration block, version
    "api.hpp",             # the public declarations
    "impl_begin.hpp",      # MI_IMPLEMENTATION gate, platform includes
    "util.hpp",            # strings, percent-encoding, UUID, hashes, time
    "json.hpp",            # strict RFC 8259 parser
    "url.hpp",             # URL parsing and query building
    "http.hpp",            # HTTP/1.1 request serialisation and response parsing
    "context.hpp",         # mi::Context and the deadline/cancel plumbing
    "socket.hpp",          # POSIX / WinSock transport for http:// endpoints
    "curl.hpp",            # optional libcurl transport (MI_USE_CURL) for https://
    "response.hpp",        # token and error bodies, expires_on forms
    "sources.hpp",         # detection and per-source request building (+ Azure Arc)
    "cache.hpp",           # the process-wide token cache with coalescing
    "client.hpp",          # options, retries, mi::New, Client::AcquireToken
    "probe.hpp",           # mi::Probe: is a managed identity endpoint here?
    "impl_end.hpp",        # close the implementation half
]

IMPLEMENTATION_FIRST = "impl_begin.hpp"
IMPLEMENTATION_LAST = "probe.hpp"
GATE_OPEN = (
    "\n// ============================================================================\n"
    "// IMPLEMENTATION. Compiled only where MI_IMPLEMENTATION is defined, once per\n"
    "// translation unit even if the header is included again.\n"
    "// ============================================================================\n"
    "#if defined(MI_IMPLEMENTATION) && !defined(MI_DETAIL_IMPLEMENTATION_INCLUDED)\n"
    "#define MI_DETAIL_IMPLEMENTATION_INCLUDED\n")
GATE_CLOSE = "\n#endif  // MI_IMPLEMENTATION\n"

BANNER = (
    "// managed_identity.hpp -- GENERATED FILE, DO NOT EDIT.\n"
    "// Built by amalgamate.py from the parts in src/; edit those and run\n"
    "// `python3 amalgamate.py`. Each part starts at a `// ---- src/<part> ----` line.\n"
)

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
PRAGMA_ONCE_RE = re.compile(r'^\s*#\s*pragma\s+once\s*$')


def fail(msg):
    sys.stderr.write("amalgamate.py: error: %s\n" % msg)
    sys.exit(2)


def build():
    if len(set(PARTS)) != len(PARTS):
        fail("a part is listed twice in PARTS")
    present = sorted(f for f in os.listdir(SRC) if not f.startswith("."))
    unlisted = [f for f in present if f not in PARTS]
    if unlisted:
        fail("files in src/ that PARTS does not list: %s" % ", ".join(unlisted))
    out = [BANNER]
    for index, name in enumerate(PARTS):
        path = os.path.join(SRC, name)
        if not os.path.isfile(path):
            fail("missing part src/%s" % name)
        with open(path, "r", encoding="utf-8", newline="") as f:
            text = f.read()
        if "\r" in text:
            fail("src/%s has CR line endings" % name)
        kept = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if PRAGMA_ONCE_RE.match(line):
                continue
            m = INCLUDE_RE.match(line)
            if m:
                used = m.group(1)
                if used not in PARTS[:index]:
                    fail("src/%s:%d includes \"%s\", which is not a part listed before it in PARTS"
                         % (name, lineno, used))
                continue
            kept.append(line)
        text = "\n".join(kept).lstrip("\n")
        if not text.endswith("\n"):
            text += "\n"
        if name == IMPLEMENTATION_FIRST:
            out.append(GATE_OPEN)
        out.append("\n// ---- src/%s ----\n" % name)
        out.append(text)
        if name == IMPLEMENTATION_LAST:
            out.append(GATE_CLOSE)
    return "".join(out)


def main(argv):
    check = "--check" in argv[1:]
    unknown = [a for a in argv[1:] if a != "--check"]
    if unknown:
        fail("usage: amalgamate.py [--check]")
    text = build()
    if check:
        try:
            with open(OUT, "r", encoding="utf-8", newline="") as f:
                committed = f.read()
        except OSError:
            committed = None
        if committed != text:
            sys.stderr.write("managed_identity.hpp is out of sync with src/: "
                             "run `python3 amalgamate.py` and commit the result\n")
            return 1
        print("managed_identity.hpp is in sync with src/")
        return 0
    with open(OUT, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
