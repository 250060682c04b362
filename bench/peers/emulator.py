#!/usr/bin/env python3
"""tools/mi_emulator.py as bench/compare runs it, with two adjustments for the peers:

- a trailing slash on the token path is accepted (MSAL for Node normalizes the URL it builds
  from AZURE_POD_IDENTITY_AUTHORITY_HOST to ".../metadata/identity/oauth2/token/"; the real IMDS
  accepts that, the emulator answers 404), counted in stats as "trailing_slash_paths";
- the listen backlog is 128 instead of socketserver's default 5, so 100 simultaneous
  connections are not dropped and retried by the kernel a second later.

Everything else (checks, bodies, /__emulator/stats, the export lines and READY) is the
emulator's own. Arguments are passed through: emulator.py --source imds
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))

import mi_emulator  # noqa: E402

_handle_any = mi_emulator.Handler.handle_any


def handle_any(self):
    path, sep, query = self.path.partition("?")
    emu = self.server.emu
    if len(path) > 1 and path.endswith("/") and path.rstrip("/") == emu.path:
        self.path = path.rstrip("/") + sep + query
        with emu.lock:
            emu.stats["trailing_slash_paths"] = emu.stats.get("trailing_slash_paths", 0) + 1
    return _handle_any(self)


mi_emulator.Handler.handle_any = handle_any
mi_emulator.Server.request_queue_size = 128

if __name__ == "__main__":
    sys.exit(mi_emulator.main())
