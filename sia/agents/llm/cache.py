"""An on-disk response cache in the run dir, keyed by the hash of the request as sent: a
resumed run (killed between request and decision) finds the answer and pays nothing twice.
The key covers everything the answer depends on (backend, endpoint, model, body) and nothing
secret (the key is in a header, never in the body)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def request_key(backend: str, base_url: str | None, body: dict) -> str:
    canonical = json.dumps({"backend": backend, "base_url": base_url or "", "body": body},
                           sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.folder is None:
            return None
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:      # a torn write from an older crash: ask again
            return None

    def put(self, key: str, response: dict) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(response, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)   # atomic: a reader sees the whole answer or none
