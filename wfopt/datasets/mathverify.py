"""math-verify equivalence (\\frac{1}{2} == 0.5 == \\frac{2}{4}) with a hard deadline.

math-verify can hang on adversarial input (sympy simplifying a huge expression, a big integer
power in C), and its own timeout uses SIGALRM, which works only in a main thread. So checks run
in worker processes (`verify_worker.py`), one per thread of a small pool; a reply that misses
its deadline gets the worker killed (and replaced on the next request) and the score
Score(0, "timeout"). A hung check therefore costs one killed process, never a stuck thread.

When a worker cannot start (math-verify not installed, no answer at startup) that is a fault
of wfopt's machinery, not the answer's: a `ScorerError` stops the run. When math-verify raises
on an input, or its worker dies on it (the memory limit), the score falls back to comparing the
normalized boxed answer with the gold (`scoring.fallback_math_equal`), with the reason in
`Score.detail`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from wfopt.datasets.base import Score
from wfopt.datasets.scoring import fallback_math_equal, last_boxed
from wfopt.errors import ScorerError

STARTUP_TIMEOUT_S = 60.0  # importing sympy + math-verify, on a busy machine
WORKER_MEMORY_MB = 4096  # RLIMIT_AS of a worker: a runaway computation fails instead of swapping
MAX_PREDICTION_CHARS = 20_000  # the tail of a longer prediction is checked (answers come last)


@dataclass
class Verdict:
    status: str  # "ok" | "timeout" | "error" (math-verify raised) | "unavailable"
    equal: bool = False
    detail: str = ""


class _Worker:
    """One worker process and its line-based JSON pipe."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
        )
        self._buffer = b""

    def send(self, message: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, deadline: float) -> dict | None:
        """The next reply, or None if it did not come before `deadline` or the worker died."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


class MathVerifier:
    """A pool of math-verify workers: each pool thread owns at most one worker process."""

    def __init__(
        self,
        max_workers: int | None = None,
        command: list[str] | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.command = command or [
            sys.executable,
            "-m",
            "wfopt.datasets.verify_worker",
            str(WORKER_MEMORY_MB),
        ]
        self.startup_timeout_s = startup_timeout_s
        self._max_workers = max_workers or min(8, os.cpu_count() or 1)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._unavailable: str | None = None  # why workers cannot start, once known
        self._failed_starts = 0
        atexit.register(self.close)

    def _worker(self) -> _Worker | str:
        """This thread's worker (started if needed), or why none can run."""
        worker = getattr(self._local, "worker", None)
        if worker is not None and worker.proc.poll() is None:
            return worker
        if self._unavailable:
            return self._unavailable
        try:
            worker = _Worker(self.command)
        except OSError as err:
            self._unavailable = f"cannot start math-verify worker: {err}"
            return self._unavailable
        hello = worker.receive(time.monotonic() + self.startup_timeout_s)
        if not hello or not hello.get("ready"):
            worker.kill()
            reason = (hello or {}).get("error", "no answer from the worker")
            with self._lock:
                self._failed_starts += 1
                # a definite "cannot import", or repeated silence: stop trying
                if hello is not None or self._failed_starts >= 3:
                    self._unavailable = f"math-verify unavailable: {reason}"
            return f"math-verify unavailable: {reason}"
        with self._lock:
            self._workers.add(worker)
        self._local.worker = worker
        return worker

    def _drop(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._workers.discard(worker)
        self._local.worker = None

    def verify(self, gold: str, prediction: str, timeout_s: float) -> Verdict:
        """Blocking check, at most `timeout_s` once a worker is ready."""
        worker = self._worker()
        if isinstance(worker, str):  # infrastructure: never a score
            raise ScorerError(
                f"{worker} (command: {' '.join(self.command)}). Reinstall wfopt's dependencies "
                "(math-verify) into this environment."
            )
        inner = max(1, math.floor(timeout_s / 2))  # math-verify's own per-step limit
        request = {"gold": gold, "prediction": prediction[-MAX_PREDICTION_CHARS:], "timeout": inner}
        try:
            worker.send(request)
        except OSError as err:
            self._drop(worker)
            return Verdict("unavailable", detail=f"math-verify worker died: {err}")
        reply = worker.receive(time.monotonic() + timeout_s)
        if reply is None:
            died = worker.proc.poll() is not None
            self._drop(worker)
            if died:  # e.g. killed by the memory limit
                return Verdict("error", detail="math-verify worker died")
            return Verdict("timeout", detail=f"math-verify took over {timeout_s:g}s")
        if reply.get("timeout"):
            return Verdict("timeout", detail=f"math-verify hit its {inner}s limit")
        if "error" in reply:
            return Verdict("error", detail=f"math-verify failed: {reply['error']}")
        return Verdict("ok", equal=bool(reply.get("equal")))

    async def averify(self, gold: str, prediction: str, timeout_s: float) -> Verdict:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_workers, "wfopt-mathverify")
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.verify, gold, prediction, timeout_s)

    def close(self) -> None:
        """Kill every worker (also run at exit)."""
        with self._lock:
            workers, self._workers = list(self._workers), set()
            executor, self._executor = self._executor, None
        for worker in workers:
            worker.kill()
        if executor is not None:
            executor.shutdown(wait=False)


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
        return _default


async def score_math(
    gold: str, prediction: str, timeout_s: float, verifier: MathVerifier | None = None
) -> Score:
    """1.0 when math-verify finds the prediction's answer equivalent to the gold."""
    if not prediction.strip():
        return Score(0.0, "no_answer", "empty prediction")
    boxed = last_boxed(prediction)
    verdict = await (verifier or default_verifier()).averify(gold, prediction, timeout_s)
    if verdict.status == "timeout":
        return Score(0.0, "timeout", verdict.detail, normalized=boxed)
    if verdict.status == "ok":
        if verdict.equal or fallback_math_equal(gold, prediction):
            return Score(1.0, normalized=boxed)
        return Score(0.0, normalized=boxed)
    ok = fallback_math_equal(gold, prediction)
    return Score(
        float(ok), detail=f"{verdict.detail}; scored by string comparison", normalized=boxed
    )
