"""A sqlite response cache in front of any backend: reruns are free and deterministic.

Key: sha256 of the canonical JSON of (model name, messages, sampling params, sample index).
Identical requests in flight at the same time are generated once and shared.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path

from wfopt.llm.base import LLM, Completion, Message, SamplingParams


def cache_key(model: str, messages: list[Message], params: SamplingParams, index: int) -> str:
    payload = {"model": model, "messages": messages, "params": params.as_dict(), "index": index}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CachedLLM:
    """Wraps `inner`; serves repeats of a request from `path` (created if missing)."""

    def __init__(self, inner: LLM, path: str | Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()
        self._in_flight: dict[str, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str):  # expose the inner backend's extras (e.g. complete_text)
        return getattr(self.inner, name)

    def _get(self, key: str) -> Completion | None:
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return Completion(**json.loads(row[0])) if row else None

    def _put(self, key: str, completion: Completion) -> None:
        value = json.dumps({**asdict(completion), "cached": False})
        self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, value))
        self._db.commit()

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        start = time.perf_counter()
        key = cache_key(self.name, messages, params, sample_index)
        stored = self._get(key)
        if stored is None and key in self._in_flight:
            stored = await asyncio.shield(self._in_flight[key])
        if stored is not None:
            self.hits += 1
            stored.cached, stored.latency_s = True, time.perf_counter() - start
            return stored
        self.misses += 1
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            completion = await self.inner.complete(messages, params, sample_index)
            self._put(key, completion)
            future.set_result(Completion(**asdict(completion)))
            return completion
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._in_flight[key]

    async def aclose(self) -> None:
        await self.inner.aclose()
        self._db.close()
