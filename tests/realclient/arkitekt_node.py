"""One arkitekt-mesh node for the real-client tests, driven over stdin/stdout.

Usage (inside the node's network namespace, with the venv's python):
    arkitekt_node.py STATE_DIR HOSTNAME CONTROL_URL AUTH_KEY

Joins (arkitekt_mesh.Node.start), prints one JSON line {"event": "up", "addresses": [...],
"join_s": ...}, then reads commands, one a line, and answers each with one JSON line:
    fetch URL TIMEOUT_S   -> {"event": "fetch", "status": 200|0, "bytes": N, "sha256": "...",
                              "secs": ..., "error": "..."}  (URL fetched through the node's HTTP
                              proxy into the tailnet; status 0 = no response / refused)
    quit                  -> closes the node and exits.
arkitekt-mesh cannot listen on the tailnet, so it is always the client side of a TCP test.
"""

import asyncio
import hashlib
import json
import sys
import time
import urllib.request

from arkitekt_mesh import Node


def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def fetch(proxy, url, timeout):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    t0 = time.monotonic()
    try:
        with opener.open(url, timeout=timeout) as r:
            body = r.read()
            return dict(status=r.status, bytes=len(body), sha256=hashlib.sha256(body).hexdigest(),
                        secs=time.monotonic() - t0, error="")
    except Exception as e:  # a refused or timed-out fetch is a result, not a crash
        status = getattr(e, "code", 0) or 0
        return dict(status=status, bytes=0, sha256="", secs=time.monotonic() - t0, error=repr(e))


async def main():
    state, hostname, control, key = sys.argv[1:5]
    t0 = time.monotonic()
    node = await Node.start(state, hostname, control_url=control, auth_key=key, timeout=90)
    say(event="up", addresses=list(node.addresses), join_s=time.monotonic() - t0)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() == "quit":
                return
            parts = line.split()
            if len(parts) == 3 and parts[0] == "fetch":
                r = await asyncio.to_thread(fetch, node.proxy_url, parts[1], float(parts[2]))
                say(event="fetch", url=parts[1], **r)
            else:
                say(event="error", error=f"unknown command {line.strip()!r}")
    finally:
        node.close()


asyncio.run(main())
