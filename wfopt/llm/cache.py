"""A sqlite response cache in front of any backend: reruns are free and deterministic.

Key: sha256 of the canonical JSON of (model identity, messages, sampling params, sample
index), so repeated samples of one prompt (different `sample_index`) stay distinct. The model
identity is the backend's `cache_identity` (which weights, dtype, prompt rendering; for a
server its URL and served model name), else its `name` (a policy checkpoint: name@id). Identical
requests in flight at the same time are generated once and shared. One connection in WAL
mode serves all coroutines of the process (sqlite calls are sub-millisecond, so they run on
the event loop); other processes may read and write the same file concurrently (a sweep, two
runs side by side): writers wait for each other (busy timeout) instead of failing.

A cache file that cannot be opened, read or written (corrupt, unreadable, disk full) is a
`CacheError` naming the file and the ways out; it is never moved aside or rebuilt silently, and
never surfaces as a workflow's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from wfopt.errors import CacheError
from wfopt.llm.base import LLM, Completion, Message, SamplingParams

BUSY_TIMEOUT_S = 120.0  # how long a writer waits for another process's transaction


def cache_error(path: Path, action: str, err: BaseException) -> CacheError:
    """What went wrong with the cache file `path`, and the ways out."""
    if action == "write it":  # disk full, read-only: the file itself may be fine
        fix = "Free space on its filesystem (or make it writable)"
    else:  # corrupt or unreadable
        fix = "Delete the file (its responses are regenerated)"
    return CacheError(
        f"response cache {path}: cannot {action}: {type(err).__name__}: {err}. {fix}, or "
        f"point executor.cache_path elsewhere (executor.cache=false runs without a cache)."
    )


def cache_key(
    model: str | dict, messages: list[Message], params: SamplingParams, index: int
) -> str:
    """sha256 of the canonical JSON of one request; `model`: the generating model's identity."""
    payload = {"model": model, "messages": messages, "params": params.as_dict(), "index": index}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _NoBackend:
    name = "none"


class CachedLLM:
    """Wraps `inner`; serves repeats of a request from the sqlite file `path` (created)."""

    def __init__(self, inner: LLM, path: str | Path) -> None:
        self.inner = inner
        self.path = Path(path).expanduser()
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._db.commit()
            self._db.execute("SELECT key FROM responses LIMIT 1").fetchall()  # readable at all?
        except (OSError, sqlite3.Error) as err:
            if self._db is not None:
                self._db.close()
            raise cache_error(self.path, "open it", err) from err
        # key -> future of the one generation in flight (None result: it failed, retry)
        self._in_flight: dict[str, asyncio.Future[Completion | None]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def check(path: str | Path) -> None:
        """Open and close the cache at `path`: a CacheError now if it is unusable."""
        CachedLLM(_NoBackend(), path)._close_db()

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __getattr__(self, name: str):
        """Expose the inner backend's extras (e.g. `LocalLLM.tokenizer`)."""
        if name == "inner":  # not set yet (unpickling, failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def identity(self) -> str | dict:
        """What keys this backend's answers: its `cache_identity`, else its current name
        (renaming a backend without an identity, e.g. a new policy checkpoint, changes keys)."""
        return getattr(self.inner, "cache_identity", None) or self.inner.name

    def _get(self, key: str) -> Completion | None:
        assert self._db is not None
        try:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            return Completion(**json.loads(row[0])) if row else None
        except (sqlite3.Error, ValueError, TypeError) as err:  # a corrupt page or row
            raise cache_error(self.path, "read it", err) from err

    def _put(self, key: str, completion: Completion) -> None:
        assert self._db is not None
        value = json.dumps(dataclasses.asdict(dataclasses.replace(completion, cached=False)))
        try:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, value))
            self._db.commit()
        except sqlite3.Error as err:  # disk full, read-only, corrupt
            with contextlib.suppress(sqlite3.Error):
                self._db.rollback()
            raise cache_error(self.path, "write it", err) from err

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        key = cache_key(self.identity, messages, params, sample_index)
        return await self._cached(key, lambda: self.inner.complete(messages, params, sample_index))

    async def complete_text(
        self, prompt: str, params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        """Raw-prompt generation (the policy's own format), cached like `complete`."""
        key = cache_key(self.identity, [{"role": "text", "content": prompt}], params, sample_index)
        return await self._cached(
            key,
            lambda: self.inner.complete_text(prompt, params, sample_index),
            # policy samples are trained on their token ids: an entry stored without them
            # (an older wfopt) is generated again rather than served
            needs_ids=True,
        )

    async def _cached(
        self,
        key: str,
        generate: Callable[[], Awaitable[Completion]],
        needs_ids: bool = False,
    ) -> Completion:
        start = time.perf_counter()
        while True:
            stored = self._get(key)
            if needs_ids and stored is not None and stored.completion_ids is None:
                stored = None
            if stored is None and key in self._in_flight:
                # the same request is being generated: share its answer
                stored = await asyncio.shield(self._in_flight[key])
                if stored is None:  # that generation failed or was cancelled: try ourselves
                    continue
            if stored is not None:
                self.hits += 1
                return dataclasses.replace(
                    stored, cached=True, latency_s=time.perf_counter() - start
                )
            break
        self.misses += 1
        future: asyncio.Future[Completion | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        completion = None
        try:
            completion = await generate()
            self._put(key, completion)
            return completion
        finally:
            del self._in_flight[key]
            future.set_result(completion)

    async def aclose(self) -> None:
        await self.inner.aclose()
        self._close_db()
