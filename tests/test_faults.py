"""Faults of wfopt's own machinery are never a workflow's score; every bad input is a clear error.

Real faults throughout: a full tmpfs under the response cache, a corrupt cache file, four real
processes writing one cache, closed sqlite connections, truncated checkpoints, read-only run
directories. The one stand-in is `EchoLLM`, a trivial backend used where the thing under test
is the cache or the attribution of an exception, not generation.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wfopt.datasets import Problem
from wfopt.errors import CacheError, InfrastructureError
from wfopt.execution import execute
from wfopt.llm import CachedLLM, SamplingParams
from wfopt.llm.base import Completion

FAST = ("executor.sampling.max_new_tokens=24", "tracking.wandb=false", "show_progress=false")
REPO = Path(__file__).resolve().parents[1]


class EchoLLM:
    """Answers every prompt with "Answer: 4" (a stand-in backend: generation is not under test)."""

    name = "echo"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, messages, params, sample_index: int = 0) -> Completion:
        self.calls += 1
        return Completion(f"Answer: 4 ({sample_index})", prompt_tokens=3, completion_tokens=2)

    async def aclose(self) -> None:
        pass


PROBLEM = Problem(id="p0", question="What is 2 + 2?", answer="4", kind="math")


def run_execute(source: str, llm) -> object:
    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset

    dataset = load_dataset(DatasetConfig())
    return asyncio.run(execute(source, PROBLEM, dataset, llm, SamplingParams(), timeout_s=30))


# --- who is at fault --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("async def solve(problem):\n    return 1 // 0\n", "ZeroDivisionError"),
        ("async def solve(problem):\n    return await ensemble(problem, 5)\n", "must be a list"),
    ],
)
def test_the_workflows_own_faults_are_scored_failures(source, detail):
    record = run_execute(source, EchoLLM())
    assert record.score == 0.0 and record.error == "runtime_error"
    assert detail in record.detail


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        (
            "async def solve(problem):\n    return await generate(problem, 'a', 'b', 'c')\n",
            "too many positional arguments",
        ),
        ("async def solve(problem):\n    return await review(problem)\n", "missing a required"),
    ],
)
def test_operator_calls_that_cannot_bind_are_invalid_before_any_call(source, detail):
    llm = EchoLLM()
    record = run_execute(source, llm)
    assert record.score == 0.0 and record.error == "invalid" and detail in record.detail
    assert llm.calls == 0


def test_a_cache_fault_inside_an_operator_stops_the_run(tmp_path):
    """Before: `runtime_error`, score 0 (the reported bug). Now: a CacheError naming the file."""
    llm = CachedLLM(EchoLLM(), tmp_path / "c.sqlite")
    llm._db.close()  # a real sqlite fault: every statement now raises ProgrammingError
    with pytest.raises(CacheError, match=r"c\.sqlite: cannot read it.*executor\.cache_path"):
        run_execute("async def solve(problem):\n    return await generate(problem)\n", llm)


def test_a_bug_inside_an_operator_is_infrastructure():
    """An exception raised by wfopt's operator code (here: a backend returning a non-string,
    a real TypeError in `_ask`) is wfopt's fault, not a 0 for the workflow."""

    class Broken(EchoLLM):
        async def complete(self, messages, params, sample_index: int = 0) -> Completion:
            return Completion(None, 1, 1)  # type: ignore[arg-type]

    with pytest.raises(InfrastructureError, match=r"operator generate failed inside wfopt"):
        run_execute("async def solve(problem):\n    return await generate(problem)\n", Broken())


def test_a_sandbox_runner_fault_is_infrastructure(monkeypatch):
    """The runner's own failure (the interpreter cannot be started: a real ENOENT from Popen)
    stops the run; the program never ran, so there is nothing to score."""
    import wfopt.sandbox as sandbox
    from wfopt.errors import SandboxError

    monkeypatch.setattr(sandbox, "_python", lambda: "/nonexistent/python3")
    with pytest.raises(SandboxError, match="nonexistent"):
        run_execute("async def solve(problem):\n    return await programmer(problem)\n", EchoLLM())


# --- the response cache -----------------------------------------------------------------------


def test_corrupt_cache_is_a_clear_error_naming_the_file(tmp_path):
    path = tmp_path / "responses.sqlite"
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(CacheError) as err:
        CachedLLM(EchoLLM(), path)
    message = str(err.value)
    assert str(path) in message and "file is not a database" in message
    assert "Delete the file" in message and "executor.cache_path" in message
    assert path.read_bytes().startswith(b"this is not")  # never moved or rebuilt silently


def test_corrupt_cache_fails_evaluate_before_loading_a_model(cli, tmp_path):
    path = tmp_path / "responses.sqlite"
    path.write_bytes(b"\0garbage" * 1000)
    run = tmp_path / "run"
    result = cli(
        "evaluate", "dataset.limit=2", f"executor.cache_path={path}", f"hydra.run.dir={run}",
        *FAST, expect_ok=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "the response cache failed" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "results.jsonl").exists()


WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_faults import EchoLLM
    from wfopt.llm import CachedLLM, SamplingParams

    path, me, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    async def main():
        llm = CachedLLM(EchoLLM(), path)
        for i in range(150):  # 150 own keys, 50 keys every writer shares
            await llm.complete([{{"role": "user", "content": f"w{{me}}-{{i}}"}}], SamplingParams())
            if i % 3 == 0:
                await llm.complete([{{"role": "user", "content": f"shared-{{i}}"}}], SamplingParams())
        await llm.aclose()
    asyncio.run(main())
    """
)


def test_four_processes_write_one_cache_without_locks_or_losses(tmp_path):
    path, go = tmp_path / "shared.sqlite", tmp_path / "go"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(REPO / "tests")))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(n), str(go)],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(4)
    ]
    go.touch()  # all four start at once, all create the file and its WAL together
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert not any("locked" in e for e in errors)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT value FROM responses").fetchall()
    assert len(rows) == 4 * 150 + 50  # every own key, each shared key once
    assert all(json.loads(v)["text"].startswith("Answer: 4") for (v,) in rows)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 512 KiB filesystem (root only, as in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_disk_full_under_the_cache_fails_the_run_not_the_workflows(cli, tmp_path, small_tmpfs):
    """The reported bug: exit 0, accuracy 0.000, `runtime_error: database or disk is full`.

    The cache exists; the filesystem keeps just what opening it needs (its WAL index), so the
    first response stored fails, in the middle of the evaluation.
    """
    cache = small_tmpfs / "responses.sqlite"
    CachedLLM.check(cache)
    before = _free(small_tmpfs)
    probe = CachedLLM(EchoLLM(), cache)
    opening = before - _free(small_tmpfs)
    asyncio.run(probe.aclose())
    with (small_tmpfs / "filler").open("wb") as f:
        f.write(b"\0" * (_free(small_tmpfs) - opening))
    run = tmp_path / "run"
    result = cli(
        "evaluate", "dataset.limit=3", "workflow=io", f"executor.cache_path={cache}",
        f"hydra.run.dir={run}", *FAST, expect_ok=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "the response cache failed" in result.stderr and str(cache) in result.stderr
    assert "cannot write it" in result.stderr and "disk is full" in result.stderr
    assert "Free space" in result.stderr and "executor.cache_path" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "results.jsonl").exists() and not (run / "summary.json").exists()


# --- checkpoints --------------------------------------------------------------------------------


def truncated(path: Path, data: bytes) -> Path:
    """`data` cut in half at `path`: what a copy interrupted half-way leaves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def broken_checkpoint(tmp_path) -> Path:
    """A full fine-tuning checkpoint whose weight file and trainer state are truncated."""
    import io

    import torch
    from safetensors.torch import save

    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    truncated(ckpt / "model" / "model.safetensors", save({"w": torch.zeros(64, 64)}))
    buffer = io.BytesIO()
    torch.save({"step": 1, "optimizer": {"x": torch.ones(256)}}, buffer)
    truncated(ckpt / "trainer_state.pt", buffer.getvalue())
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "lora": False}))
    (ckpt.parent / "latest").write_text(ckpt.name + "\n")
    return ckpt


def test_truncated_trainer_state_and_summary_name_the_file(broken_checkpoint):
    from wfopt.errors import CheckpointError
    from wfopt.grpo.checkpoint import load_trainer_state, read_summary

    with pytest.raises(CheckpointError, match=r"trainer_state\.pt is unreadable.*truncated"):
        load_trainer_state(broken_checkpoint)
    (broken_checkpoint / "state.json").write_text('{"step": 1, "lo')
    with pytest.raises(CheckpointError, match=r"state\.json is unreadable"):
        read_summary(broken_checkpoint)


def test_truncated_checkpoint_given_to_evaluate_policy(cli, tmp_path, broken_checkpoint):
    result = cli(
        "evaluate", f"policy={broken_checkpoint.parent.parent}", "dataset.limit=1",
        f"hydra.run.dir={tmp_path / 'eval'}", *FAST, expect_ok=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert str(broken_checkpoint / "model" / "model.safetensors") in result.stderr
    assert "truncated or corrupt" in result.stderr and "Traceback" not in result.stderr


def test_truncated_checkpoint_given_to_loop_resume(cli, tmp_path, broken_checkpoint):
    run = tmp_path / "loop"
    cli("loop", "dry_run=true", f"hydra.run.dir={run}", *FAST)  # the run's config, nothing else
    state = {"episode": 1, "cursor": 4, "checkpoint": str(broken_checkpoint), "train_step": 1}
    (run / "state.json").write_text(json.dumps(state))
    result = cli("loop", f"resume={run}", f"hydra.run.dir={tmp_path / 'again'}", expect_ok=False)
    assert result.returncode != 0
    assert str(broken_checkpoint / "model" / "model.safetensors") in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((run / "state.json").read_text()) == state  # nothing rewritten


# --- a flaky OpenAI-compatible server, soaked ---------------------------------------------------

FAULT_KINDS = ("500", "429", "timeout", "drop", "malformed")
CLIENT_TIMEOUT_S = 0.5


class FlakyServer:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 that fails at random.

    Draw k of a seeded RNG decides whether the k-th request is a fault; the faults cycle
    through 500, 429 (both with a 10 ms Retry-After), a timeout (no answer within the
    client's timeout), a dropped connection and malformed JSON (these three are retried after
    the openai client's backoff schedule, 0.375-0.5 s at first). Healthy answers are a fixed
    function of the prompt (the gold answer of the problem in it, or gold + 1), so a run's
    results do not depend on which requests failed. `down=True`: every request is a 503 (an
    outage; also with the 10 ms Retry-After).
    """

    def __init__(self, golds: dict[str, str], fault_rate: float, seed: int = 0) -> None:
        import random
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.golds, self.fault_rate, self.down = golds, fault_rate, False
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.faults: Counter[str] = Counter()
        self.answered = 0
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fault = flaky.draw()
                if fault == "drop":
                    self.close_connection = True  # no status line at all
                    return
                if fault == "timeout":
                    import time

                    time.sleep(CLIENT_TIMEOUT_S + 0.3)
                status, headers, data = 200, {}, b'{"id": "x", "choices": [ {"mess'
                if fault in ("500", "down"):  # Retry-After: no 0.5-8 s client backoff
                    status, data = (503 if fault == "down" else 500), b'{"error": {"message": "x"}}'
                    headers = {"Retry-After": "0.01"}
                elif fault == "429":
                    status, headers, data = 429, {"Retry-After": "0.01"}, b'{"error": {}}'
                elif fault in (None, "timeout"):
                    data = json.dumps(flaky.completion(body)).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def draw(self) -> str | None:
        with self.lock:
            if self.down:
                self.faults["down"] += 1
                return "down"
            if self.rng.random() < self.fault_rate:
                kind = FAULT_KINDS[sum(self.faults.values()) % len(FAULT_KINDS)]
                self.faults[kind] += 1
                return kind
            self.answered += 1
            return None

    def completion(self, body: dict) -> dict:
        import zlib

        prompt = body["messages"][-1]["content"]
        gold = next((g for q, g in self.golds.items() if q in prompt), None)
        # right for about half of the prompts, always the same answer for one prompt
        text = "A" if gold is None else f"Answer: {int(gold) + zlib.crc32(prompt.encode()) % 2}"
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }  # fmt: skip

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky():
    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset

    dataset = load_dataset(DatasetConfig(num_problems=60))
    golds = {p.question: p.answer for s in ("train", "test") for p in dataset.problems(s)}
    servers: list[FlakyServer] = []

    def start(fault_rate: float) -> FlakyServer:
        servers.append(FlakyServer(golds, fault_rate, seed=len(servers)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def executor_args(server: FlakyServer, retries: int = 12) -> list[str]:
    return [
        "executor=openai", "executor.model=flaky", f"executor.base_url={server.url}",
        f"executor.max_retries={retries}", f"executor.timeout_s={CLIENT_TIMEOUT_S}",
        "executor.cache=false", "dataset.num_problems=60",
    ]  # fmt: skip


def _records(run: Path) -> list[tuple]:
    lines = (run / "results.jsonl").read_text().splitlines()
    return [
        (r["problem_id"], r["prediction"], r["score"], r["error"]) for r in map(json.loads, lines)
    ]


def test_evaluation_against_a_flaky_server_equals_a_clean_one(cli, tmp_path, flaky):
    """Every fault is retried (and counted), none is scored: the results are exactly those
    against a server that never fails."""
    clean, noisy = flaky(0.0), flaky(0.35)
    args = ["evaluate", "workflow=cot_sc", "dataset.limit=6", *FAST]
    cli(*args, *executor_args(clean), f"hydra.run.dir={tmp_path / 'clean'}")
    cli(*args, *executor_args(noisy), f"hydra.run.dir={tmp_path / 'noisy'}")
    assert noisy.injected >= len(FAULT_KINDS) and set(noisy.faults) == set(FAULT_KINDS)
    reference = _records(tmp_path / "clean")
    assert _records(tmp_path / "noisy") == reference
    assert 0 < sum(r[2] for r in reference) < len(reference)  # the server is right sometimes
    metrics = [json.loads(line) for line in (tmp_path / "noisy" / "metrics.jsonl").open()]
    logged = next(m for m in metrics if "executor/retries" in m)
    assert logged["executor/retries"] == noisy.injected  # one retry per fault
    assert logged["executor/requests"] == noisy.answered == clean.answered


def _search(run: Path, server: FlakyServer, *extra: str, retries: int = 12) -> list[str]:
    return [
        "search", "dataset.limit=2", "mcts.proposer=edits", "mcts.iterations=2",
        "mcts.rollouts=1", *FAST, *executor_args(server, retries), f"hydra.run.dir={run}", *extra,
    ]  # fmt: skip


def _rewards(run: Path) -> dict[str, tuple]:
    lines = (run / "trajectories.jsonl").read_text().splitlines()
    return {
        t["problem_id"]: (tuple(t["workflow_codes"]), tuple(t["rewards"]))
        for t in map(json.loads, lines)
    }


def test_search_against_a_flaky_server_then_an_outage_then_resume(cli, tmp_path, flaky):
    clean, noisy = flaky(0.0), flaky(0.35)
    cli(*_search(tmp_path / "clean", clean))
    reference = _rewards(tmp_path / "clean")
    assert len(reference) == 2

    cli(*_search(tmp_path / "noisy", noisy))
    assert _rewards(tmp_path / "noisy") == reference  # no trajectory lost, no fault a 0
    summary = json.loads((tmp_path / "noisy" / "search_summary.json").read_text())
    assert summary["executor/retries"] == noisy.injected > 0

    noisy.down = True  # an outage longer than the retries
    run = tmp_path / "outage"
    result = cli(*_search(run, noisy, retries=2), expect_ok=False)
    assert result.returncode != 0 and "the executor failed" in result.stderr
    assert f"resume={run}" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "trajectories.jsonl").exists() or _rewards(run).items() <= reference.items()

    noisy.down = False  # back up: the resumed search finishes what is missing
    cli(*_search(tmp_path / "resumed", noisy, f"resume={run}"))
    assert _rewards(run) == reference


# --- the run directory --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_unwritable_run_directory_fails_at_the_first_write(cli, small_tmpfs, fault):
    """Before: Hydra's traceback (`OSError: [Errno 28]` / `[Errno 30]`) from its config dump."""
    if fault == "full":
        with (small_tmpfs / "filler").open("wb") as f:
            f.write(b"\0" * _free(small_tmpfs))
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    run = small_tmpfs / "run"
    for command in ("evaluate", "search", "loop"):
        result = cli(command, "dataset.limit=1", f"hydra.run.dir={run}", *FAST, expect_ok=False)
        assert result.returncode != 0
        assert f"wfopt {command}: the run directory cannot be written" in result.stderr
        assert f"cannot write {run}" in result.stderr and "Traceback" not in result.stderr
        reason = "No space left" if fault == "full" else "Read-only file system"
        assert reason in result.stderr
