"""One-question probes: each prints its rows as they are measured and saves them with its command."""
from __future__ import annotations

import json
from pathlib import Path


def record(result: dict, row: dict) -> None:
    """Append a measured row and print it at once (a long probe shows its progress)."""
    result["rows"].append(row)
    print(json.dumps(row), flush=True)


def finish(out: Path | None, result: dict) -> dict:
    """Save the result (atomically) where --out says; return it."""
    if out:
        from vpns_deploy.atomic import atomic_write_json

        atomic_write_json(out, result)
    return result
