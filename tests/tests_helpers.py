"""Helpers shared by test files that drive local jobs in their own processes."""
from __future__ import annotations

import json
import time


def rest(port: int, path: str) -> dict:
    """``GET`` on a local job's REST endpoint."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read() or b"{}")


def wait_for(proc, log, cond, what: str, timeout: float = 240) -> None:
    """Until ``cond()``, while ``proc`` runs (its ``log``'s end if it ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        if cond():
            return
        time.sleep(2)
    raise TimeoutError(what)
