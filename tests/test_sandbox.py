"""Hostile-input tests for wfopt.sandbox: real child processes, no mocks.

Most tests run twice: under the isolation this machine has (bubblewrap when it works) and under the
rlimits fallback, forced by replacing `isolation()`, so the fallback's real code path is exercised
too. Checks that only bubblewrap can pass (file system, network, signals) skip without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wfopt import sandbox
from wfopt.sandbox import SandboxLimits, SandboxResult, arun_python, isolation, run_python

HOSTILE = SandboxLimits(timeout_s=2, cpu_s=5, memory_mb=256)
needs_bwrap = pytest.mark.skipif(
    isolation() != "bwrap", reason="only bubblewrap contains the file system, network and signals"
)
# Root ignores RLIMIT_NPROC: a fork bomb is only capped by a pids cgroup then.
process_capped = os.geteuid() != 0 or sandbox._pids_cgroup_parent() is not None
needs_process_cap = pytest.mark.skipif(
    not process_capped, reason="root without a writable pids cgroup: fork bombs are not capped"
)


@pytest.fixture(params=["bwrap", "rlimits"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test under bubblewrap (if available) and under the forced rlimits fallback."""
    if request.param == "bwrap" and isolation() != "bwrap":
        pytest.skip("bubblewrap is not available here")
    if request.param == "rlimits":
        monkeypatch.setattr(sandbox, "isolation", lambda: "rlimits")
    return request.param


def _cwd_processes(workdir: str) -> list[int]:
    """Host pids of processes whose cwd is `workdir` (every sandboxed process starts there)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.removesuffix(" (deleted)") == workdir:
                pids.append(int(entry))
    return pids


def _descendants() -> set[int]:
    """Pids of every live process below this test process."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _assert_no_strays(
    workdir: str, grace_s: float = 2.0, baseline: frozenset[int] = frozenset()
) -> None:
    """Nothing the run started survives it (allowing the kernel a moment to reap).

    `baseline`: descendants that existed before the run (e.g. worker pools of earlier tests).
    """
    deadline = time.monotonic() + grace_s
    while (_cwd_processes(workdir) or _descendants() - baseline) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cwd_processes(workdir) == []
    assert _descendants() - baseline == set()


def _workdir(result: SandboxResult) -> str:
    """The run's directory, which the hostile programs print first."""
    first = result.stdout.splitlines()[0]
    assert first.startswith("/") and "wfopt-sandbox-" in first, result
    return first


# -- ordinary programs --------------------------------------------------------------------------


def test_program_prints_and_exits_ok(mode: str) -> None:
    result = run_python("print('hello', 6 * 7)")
    assert result.status == "ok" and result.ok, result
    assert result.stdout == "hello 42\n"
    assert result.returncode == 0


def test_stdin_is_passed_even_when_larger_than_a_pipe_buffer(mode: str) -> None:
    text = "line\n" * 100_000  # 500 kB: more than a pipe holds, so writing must not deadlock
    result = run_python(
        "import sys; data = sys.stdin.read(); print(len(data), data[:4])", stdin=text
    )
    assert result.ok, result
    assert result.stdout == f"{len(text)} line\n"


def test_syntax_error_is_an_error(mode: str) -> None:
    result = run_python("def f(:\n    pass\n")
    assert result.status == "error" and not result.ok
    assert "SyntaxError" in result.stderr


def test_exception_is_an_error_with_traceback(mode: str) -> None:
    result = run_python("def f():\n    raise ValueError('boom')\nf()\n")
    assert result.status == "error"
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: boom" in result.stderr


def test_nonzero_exit_is_an_error(mode: str) -> None:
    result = run_python("import sys; print('partial'); sys.exit(3)")
    assert (result.status, result.returncode, result.stdout) == ("error", 3, "partial\n")


def test_environment_is_minimal_and_has_no_secrets(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-value")
    result = run_python("import os; print(sorted(os.environ)); print(os.environ['HOME'])")
    assert result.ok, result
    assert "sk-secret" not in result.stdout and "OPENAI_API_KEY" not in result.stdout
    names = eval(result.stdout.splitlines()[0])
    assert set(names) <= {"PATH", "LANG", "HOME", "TMPDIR", "PWD"}
    assert "wfopt-sandbox-" in result.stdout.splitlines()[1]


def test_temp_dir_is_cwd_and_removed_afterwards(mode: str) -> None:
    code = "import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')\nos.mkdir('sub')\n"
    code += "os.chmod('sub', 0)\n"  # an unreadable directory must not block the cleanup
    result = run_python(code)
    assert result.ok, result
    workdir = _workdir(result)
    assert not os.path.exists(workdir)


# -- time ---------------------------------------------------------------------------------------


def test_infinite_loop_times_out_and_leaves_no_process(mode: str) -> None:
    before = _descendants()
    start = time.monotonic()
    result = run_python(
        "import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    pass\n", limits=HOSTILE
    )
    assert result.status == "timeout", result
    assert time.monotonic() - start < HOSTILE.timeout_s + 2
    _assert_no_strays(_workdir(result), baseline=frozenset(before))
    assert not os.path.exists(_workdir(result))


def test_sleeping_grandchild_in_new_session_is_killed_too(mode: str) -> None:
    """A child that leaves the process group with setsid() is still killed with the run."""
    if mode == "rlimits" and sandbox._pids_cgroup_parent() is None:
        pytest.skip("without bwrap's pid namespace only a pids cgroup finds setsid() escapees")
    code = (
        "import os, time\nprint(os.getcwd(), flush=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
        "time.sleep(60)\n"
    )
    before = frozenset(_descendants())
    result = run_python(code, limits=HOSTILE)
    assert result.status == "timeout", result
    _assert_no_strays(_workdir(result), baseline=before)


def test_cpu_burn_hits_the_cpu_limit(mode: str) -> None:
    # the wall limit far above the CPU limit: on cores shared with other work (make test runs
    # one pytest worker per core) 1 s of CPU can take a few seconds of wall time
    limits = SandboxLimits(timeout_s=30, cpu_s=1)
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", limits=limits)
    assert result.status == "timeout", result
    assert time.monotonic() - start < 15, "the CPU limit, not the wall clock, should stop it"


# -- memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(bytearray(10**6))\n"],
    ids=["huge-alloc", "growing-list"],
)
def test_memory_bomb_is_stopped_and_caller_unharmed(mode: str, code: str) -> None:
    result = run_python(code, limits=HOSTILE)
    assert result.status == "memory", result
    assert bytearray(10**7)[:1] == b"\x00"  # this process can still allocate
    assert run_python("print('after')").stdout == "after\n"


# -- processes ----------------------------------------------------------------------------------


@needs_process_cap
def test_fork_bomb_is_contained(mode: str) -> None:
    code = (
        "import os\nprint(os.getcwd(), flush=True)\n"
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    before = _descendants()
    start = time.monotonic()
    result = run_python(code, limits=HOSTILE)
    assert time.monotonic() - start < HOSTILE.timeout_s + 3
    assert result.status == "timeout", result
    _assert_no_strays(_workdir(result), grace_s=5, baseline=frozenset(before))


@needs_bwrap
def test_signals_do_not_reach_the_caller() -> None:
    """The sandbox cannot signal this process, neither as its parent nor by its host pid."""
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: received.append(signum))
    try:
        code = f"""
import os, signal
for pid, sig in [({os.getpid()}, signal.SIGUSR1), (os.getppid(), signal.SIGKILL)]:
    try:
        os.kill(pid, sig)
    except OSError as e:
        print("refused", pid, e.errno)
print("still here")
"""
        result = run_python(code)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [], "a sandboxed process signalled the test process"
    assert "still here" in result.stdout, result
    assert run_python("print(1)").ok


# -- output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_capped(mode: str, stream: str) -> None:
    limits = SandboxLimits(timeout_s=10, output_bytes=50_000)
    code = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 1000)\n"
    start = time.monotonic()
    result = run_python(code, limits=limits)
    assert result.status == "output_limit", result.status
    assert len(result.stdout) + len(result.stderr) <= limits.output_bytes
    assert len(getattr(result, stream)) > limits.output_bytes // 2
    assert time.monotonic() - start < 5, "the run must stop at the cap, not at the timeout"


# -- file system, network -----------------------------------------------------------------------


@pytest.fixture
def etc_probe() -> Iterator[Path]:
    """A fresh path under /etc; removed afterwards should a broken sandbox have created it."""
    path = Path(f"/etc/wfopt-sandbox-probe-{uuid.uuid4().hex[:8]}")
    yield path
    path.unlink(missing_ok=True)


@needs_bwrap
def test_writes_outside_the_temp_dir_do_not_reach_the_host(tmp_path: Path, etc_probe: Path) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("original")
    created = tmp_path / "created.txt"
    code = f"""
for path in [{str(existing)!r}, {str(created)!r}, {str(etc_probe)!r}]:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
"""
    result = run_python(code)
    assert result.ok, result
    assert existing.read_text() == "original"
    assert not created.exists()
    assert not etc_probe.exists()


@needs_bwrap
def test_subprocess_and_subclasses_tricks_cannot_write_outside(
    tmp_path: Path, etc_probe: Path
) -> None:
    via_subprocess = tmp_path / "via-subprocess"
    via_subclasses = tmp_path / "via-subclasses"
    code = f"""
import subprocess
subprocess.run(["sh", "-c", "echo pwned > {via_subprocess}; echo pwned > {etc_probe}"])
popen = next(c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "Popen")
popen(["sh", "-c", "echo pwned > {via_subclasses}"]).wait()
print("done")
"""
    result = run_python(code)
    assert result.stdout.strip() == "done", result
    assert not via_subprocess.exists() and not via_subclasses.exists()
    assert not etc_probe.exists()


@needs_bwrap
def test_loopback_listener_on_the_host_is_unreachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hi")
    print("connected")
except OSError as e:
    print("blocked", type(e).__name__)
"""
        result = run_python(code)
        assert result.ok, result
        assert result.stdout.startswith("blocked"), result.stdout
        with pytest.raises(BlockingIOError):
            server.accept()


# -- async --------------------------------------------------------------------------------------


def test_concurrent_async_runs_all_succeed_without_blocking_the_loop() -> None:
    async def main() -> tuple[list[SandboxResult], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        code = "import sys, time\ntime.sleep(1)\nprint(int(sys.stdin.read()) ** 2)\n"
        results = await asyncio.gather(*(arun_python(code, stdin=str(i)) for i in range(8)))
        tick_task.cancel()
        return list(results), ticks

    start = time.monotonic()
    results, ticks = asyncio.run(main())
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]
    assert all(r.ok for r in results)
    # one after the other they take >= 8 s; the margin is for cores shared with other tests
    assert time.monotonic() - start < 6, "the 8 runs should overlap"
    assert ticks >= 5, "the event loop was blocked while the runs went on"


def test_cancelled_async_run_kills_the_child() -> None:
    before = frozenset(_descendants())

    async def main() -> None:
        task = asyncio.create_task(arun_python("import time\ntime.sleep(60)\n"))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the worker notices the cancel within a poll interval

    asyncio.run(main())
    _assert_no_strays("/nonexistent", baseline=before)


# -- no preexec_fn: limits from the prelude, safe under threads --------------------------------

LIMITS_PROBE = """\
import os, resource
names = ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"]
print(*(resource.getrlimit(getattr(resource, n)) for n in names), sep=";")
print(sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
"""
# (code, status, a fragment of stderr): each limit really stops a run started under load
ENFORCED = [
    ("b = bytearray(600 * 1024 * 1024)", "memory", "MemoryError"),
    ("open('big', 'wb').write(b'x' * (3 * 1024 * 1024))", "error", "File too large"),
    ("fs = [open('main.py') for _ in range(40)]", "error", "Too many open files"),
    ("while True: pass", "timeout", ""),
]


def test_hundreds_of_runs_from_threads_finish_with_every_limit_enforced(mode: str) -> None:
    """`preexec_fn` could deadlock a child forked while other threads hold locks; the prelude
    cannot. 200 runs from 48 threads at once: none hangs, each has exactly its limits, and
    limit-breaking runs among them are stopped."""
    from concurrent.futures import ThreadPoolExecutor

    limits = SandboxLimits(timeout_s=20, cpu_s=1, memory_mb=256, file_size_mb=2, max_open_files=32)
    jobs = [ENFORCED[i // 50] if i % 50 == 0 else (LIMITS_PROBE, "ok", "") for i in range(200)]
    start = time.monotonic()
    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(lambda job: run_python(job[0], limits=limits), jobs))
    assert time.monotonic() - start < 240, "the runs should not hang"
    mb = 1024 * 1024
    expected = ";".join(str(v) for v in [(1, 2), (256 * mb,) * 2, (2 * mb,) * 2, (32, 32), (0, 0)])
    for (code, status, fragment), result in zip(jobs, results, strict=True):
        assert result.status == status, (code, result)
        assert fragment in result.stderr
        if code is LIMITS_PROBE:
            rlimits, fds = result.stdout.splitlines()
            assert rlimits == expected
            assert json.loads(fds) == [0, 1, 2, 3]  # no status pipe or other leaked descriptor


def test_a_program_cannot_pass_itself_off_as_a_sandbox_failure(mode: str) -> None:
    """Printing bubblewrap's error prefix and exiting 1 is the program's error, not the
    sandbox's (a sandbox_error stops a whole search)."""
    result = run_python("import sys\nsys.stderr.write('bwrap: no permission\\n')\nsys.exit(1)")
    assert result.status == "error" and result.returncode == 1


def test_a_prelude_that_fails_is_a_sandbox_error(mode: str, monkeypatch, tmp_path) -> None:
    """A cgroup that cannot be joined (here: gone) is the sandbox's fault: the program never
    ran, so the run is a sandbox_error with the reason, never a status of the program."""
    monkeypatch.setattr(sandbox, "_make_cgroup", lambda limits: tmp_path / "gone")
    result = run_python("print('ran')")
    assert result.status == "sandbox_error" and result.stdout == ""
    assert "FileNotFoundError" in result.stderr and "gone" in result.stderr


@needs_bwrap
def test_bubblewrap_that_cannot_start_is_a_sandbox_error(monkeypatch) -> None:
    real = sandbox._bwrap_argv
    monkeypatch.setattr(
        sandbox, "_bwrap_argv", lambda *a: [real(*a)[0], "--no-such-option", *real(*a)[1:]]
    )
    result = run_python("print('ran')")
    assert result.status == "sandbox_error" and "before the program started" in result.stderr


# -- isolation choice ---------------------------------------------------------------------------


def test_fallback_is_chosen_and_announced_once_without_bwrap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    sandbox.isolation.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="wfopt.sandbox"):
            assert sandbox.isolation() == "rlimits"
            assert sandbox.isolation() == "rlimits"
        warnings = [r for r in caplog.records if "SANDBOX WARNING" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        sandbox.isolation.cache_clear()
