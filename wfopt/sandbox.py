"""Run untrusted Python (model-written programs, candidate solutions) in a contained child process.

Every run gets a fresh temporary directory (its cwd, `HOME` and `TMPDIR`, removed afterwards), the
code as `main.py` in it, `python -I` (isolated mode: no user site, no `PYTHON*` variables) and a
minimal environment (PATH, LANG, HOME, TMPDIR: no API keys). Layers of containment:

* **bubblewrap** (`isolation() == "bwrap"`, used when `bwrap` is on PATH and a trivial probe runs):
  read-only view of the whole system, the host user's home hidden (except the interpreter), a
  private size-capped `/tmp`, `/dev/shm` and a read-only `/dev`, only the run's directory writable;
  new user, pid, network, IPC, UTS and cgroup namespaces (no network at all, not even the host's
  loopback; no other process visible or signalable), all capabilities dropped, a new terminal session,
  and the sandbox dies with its parent. When the pid namespace's init dies, the kernel kills every
  process left in it, so nothing a run starts outlives it.
* **rlimits**, set by a tiny prelude the child runs before exec'ing bwrap or the program (not
  `preexec_fn`, which can deadlock a child forked from a threaded parent): CPU seconds, address
  space, file size, open files and no core dumps. The prelude also tells the parent, on a private
  pipe, when the program itself starts: a run that never got there is a `sandbox_error` (the
  sandbox's fault), which nothing the program prints can imitate, and the wall clock starts then.
* **a process cap**: root ignores RLIMIT_NPROC, so as root each run gets its own `pids` cgroup
  (pids.max) where one is writable; as another user RLIMIT_NPROC is set to the user's current task
  count plus the cap. This is what stops a fork bomb from exhausting the host's pids and memory.
* **the wall clock**: the child leads a new session; on timeout, output overflow, or when done, its
  whole process group (and its cgroup) is SIGKILLed.

The fallback without bubblewrap (`isolation() == "rlimits"`, announced by a loud logged warning)
keeps the rlimits, the process cap, the session and the kill, but does NOT contain: file system
access (the code can read and write whatever the calling user can, `/etc` included when root), the
network, signals to other processes of the same user (`os.kill(os.getppid(), 9)` kills the caller),
or, without a pids cgroup, processes that leave the process group with `setsid()`. Install
bubblewrap (`make sandbox-tools`) before running untrusted code.

Limits common to both modes: memory is capped per process (RLIMIT_AS), not per run, so a run that
forks up to the process cap can use up to cap times the memory limit; the run's directory lives on
the host's temporary disk, bounded only by the file size limit times the time limit.

Child misbehaviour never raises: it is reported in `SandboxResult.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PATH = "/usr/local/bin:/usr/bin:/bin"
_MAX_CONCURRENT = 32  # threads behind arun_python; further calls queue
_POLL_S = 0.05


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock; on expiry the whole process group is killed
    cpu_s: int = 10  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS, per process
    output_bytes: int = 100_000  # stdout+stderr kept at most; more => status "output_limit"
    file_size_mb: int = 16  # RLIMIT_FSIZE; also the size of bwrap's private /tmp and /dev/shm
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_processes: int = 64  # pids cgroup (root) or RLIMIT_NPROC headroom (other users)


@dataclass
class SandboxResult:
    # "ok" | "error" (nonzero exit / exception) | "timeout" (wall clock or CPU limit) | "memory"
    # | "output_limit" | "killed" (another signal) | "sandbox_error" (the sandbox itself failed)
    status: str
    stdout: str
    stderr: str
    returncode: int | None  # negative: killed by that signal (also under bwrap)
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# -- isolation mode ---------------------------------------------------------------------------


def _python() -> str:
    """The real interpreter binary, not a venv's link to it: a venv under /tmp is hidden by the
    sandbox's private /tmp, the interpreter it points to is not (the code runs with -I anyway)."""
    return os.path.realpath(sys.executable or shutil.which("python3") or "/usr/bin/python3")


def _bwrap_argv(bwrap: str, workdir: str, limits: SandboxLimits) -> list[str]:
    """bubblewrap command line: read-only system, only `workdir` (and small tmpfs's) writable."""
    size = str(limits.file_size_mb * 1024 * 1024)
    argv = [bwrap, "--ro-bind", "/", "/"]
    # Hide the host user's home (keys, tokens, caches) but keep an interpreter installed there.
    home = os.path.realpath(os.path.expanduser("~"))
    if home != "/" and os.path.isdir(home):
        argv += ["--tmpfs", home]
        prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
        prefixes.add(os.path.dirname(os.path.realpath(_python())))
        for prefix in sorted(prefixes):
            if prefix.startswith(home + os.sep):
                argv += ["--ro-bind", prefix, prefix]
    argv += ["--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    argv += ["--size", size, "--tmpfs", "/tmp", "--bind", workdir, workdir, "--proc", "/proc"]
    argv += ["--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
    return [*argv, "--chdir", workdir, "--"]


@functools.cache
def isolation() -> str:
    """`"bwrap"` if bubblewrap is installed and works here, else `"rlimits"` (warned once)."""
    bwrap = shutil.which("bwrap")
    reason = "bwrap is not on PATH"
    if bwrap:
        with tempfile.TemporaryDirectory(prefix="wfopt-probe-") as workdir:
            argv = [*_bwrap_argv(bwrap, workdir, SandboxLimits()), _python(), "-I", "-c", "pass"]
            try:
                probe = subprocess.run(argv, capture_output=True, timeout=30, env=_env(workdir))
                if probe.returncode == 0:
                    return "bwrap"
                reason = f"bwrap probe failed: {probe.stderr.decode(errors='replace').strip()}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                reason = f"bwrap probe failed: {exc}"
    log.warning(
        "SANDBOX WARNING: %s; untrusted code runs with rlimits only: it can read and write the "
        "user's files, use the network and signal the user's processes. Install bubblewrap "
        "(`make sandbox-tools`).",
        reason,
    )
    return "rlimits"


def _env(workdir: str) -> dict[str, str]:
    return {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


# -- process cap ------------------------------------------------------------------------------


@functools.cache
def _pids_cgroup_parent() -> Path | None:
    """Writable `pids` cgroup directory (ours, v1 or v2) to nest per-run cgroups in, or None."""
    if os.geteuid() != 0:
        return None
    try:
        cgroups = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return None
    own = {ctrls: path for _, ctrls, path in (line.split(":", 2) for line in cgroups)}
    for fields in mounts:
        sep = fields.index("-")
        fstype, mount, options = fields[sep + 1], fields[4], fields[sep + 3].split(",")
        if fstype == "cgroup" and "pids" in options:
            path = next((p for c, p in own.items() if "pids" in c.split(",")), None)
        elif fstype == "cgroup2" and "pids" in _read(Path(mount, "cgroup.controllers")).split():
            path = own.get("")
        else:
            continue
        if path is not None:
            parent = Path(mount + path)
            # Probe: make and remove a child with a limit (v2 also needs pids enabled below us).
            probe = parent / f"wfopt-probe-{os.getpid()}"
            try:
                probe.mkdir()
                try:
                    (probe / "pids.max").write_text("8")
                finally:
                    probe.rmdir()
                return parent
            except OSError:
                continue
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _make_cgroup(limits: SandboxLimits) -> Path | None:
    parent = _pids_cgroup_parent()
    if parent is None:
        return None
    cgroup = parent / f"wfopt-sandbox-{uuid.uuid4().hex[:12]}"
    try:
        cgroup.mkdir()
        (cgroup / "pids.max").write_text(str(limits.max_processes))
        return cgroup
    except OSError as exc:
        log.warning("sandbox: could not set up pids cgroup %s: %s", cgroup, exc)
        _remove_cgroup(cgroup)
        return None


def _kill_cgroup(cgroup: Path | None) -> None:
    """SIGKILL every process in the cgroup until it is empty (a fork bomb refills it for a while)."""
    if cgroup is None:
        return
    for _ in range(200):
        pids = [int(p) for p in _read(cgroup / "cgroup.procs").split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _remove_cgroup(cgroup: Path | None) -> None:
    if cgroup is None:
        return
    for _ in range(100):  # killed processes take a moment to leave
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    log.warning("sandbox: could not remove cgroup %s", cgroup)


def _user_tasks(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) owned by real uid `uid`."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            status = _read(Path(entry.path, "status"))
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("Uid", "").split()[:1] == [str(uid)]:
                count += int(fields.get("Threads", "1"))
    return count


# The prelude: a few lines of Python that the sandbox's processes run before the real program,
# because `preexec_fn` is unsafe in a threaded parent (the child can deadlock before exec). The
# outer one joins the cgroup, sets the rlimits and execs bwrap (or, without bwrap, the program);
# the program's own process reports "R" (started) on the status pipe and closes it before
# exec'ing the program, so nothing the program does can look like a failure of the sandbox. A
# prelude that fails reports "E<reason>" there instead. Run with -S: no site import, fast.
_PRELUDE = """\
import json, os, resource, sys
fd, spec = int(sys.argv[1]), json.loads(sys.argv[2])
try:
    if spec["cgroup"]:
        g = os.open(spec["cgroup"], os.O_WRONLY)
        try:
            os.write(g, str(os.getpid()).encode())
        finally:
            os.close(g)
    for which, soft, hard in spec["rlimits"]:
        resource.setrlimit(which, (soft, hard))
    if spec["started"]:
        os.write(fd, b"R")
        os.set_inheritable(fd, False)  # closed by a successful exec: the program never sees it
    os.execv(sys.argv[3], sys.argv[3:])
except BaseException as exc:
    os.write(fd, f"E{type(exc).__name__}: {exc}".encode())
    os._exit(127)
"""
_STARTUP_S = 60.0  # the sandbox must start the program within this (a very busy machine)


def _prelude(status_fd: int, spec: dict, argv: list[str]) -> list[str]:
    return [_python(), "-I", "-S", "-c", _PRELUDE, str(status_fd), json.dumps(spec), *argv]


def _rlimits(limits: SandboxLimits, nproc: int | None) -> list[tuple[int, int, int]]:
    mb = 1024 * 1024
    rlimits = [
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),  # SIGXCPU, then SIGKILL
        (resource.RLIMIT_AS, limits.memory_mb * mb, limits.memory_mb * mb),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mb, limits.file_size_mb * mb),
        (resource.RLIMIT_NOFILE, limits.max_open_files, limits.max_open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if nproc is not None:
        rlimits.append((resource.RLIMIT_NPROC, nproc, nproc))
    return rlimits


def _argv(
    mode: str, limits: SandboxLimits, workdir: str, cgroup: Path | None, nproc: int | None, fd: int
) -> list[str]:
    """The whole command line: outer prelude [-> bwrap -> inner prelude] -> the program."""
    program = [_python(), "-I", "main.py"]
    outer = {"cgroup": str(cgroup / "cgroup.procs") if cgroup else None}
    outer["rlimits"] = _rlimits(limits, nproc)  # type: ignore[assignment]
    if mode != "bwrap":
        return _prelude(fd, {**outer, "started": True}, program)
    inner = _prelude(fd, {"cgroup": None, "rlimits": [], "started": True}, program)
    bwrap = _bwrap_argv(shutil.which("bwrap") or "bwrap", workdir, limits)
    return _prelude(fd, {**outer, "started": False}, [*bwrap, *inner])


# -- running ----------------------------------------------------------------------------------


@dataclass
class _Outcome:
    returncode: int | None = None
    timed_out: bool = False
    output_limited: bool = False
    cancelled: bool = False
    status: bytes = b""  # what the preludes reported: b"R" started, b"E..." failed
    deadline: float = 0.0  # the program's own wall-clock deadline, once it started

    @property
    def started(self) -> bool:
        return self.status.startswith(b"R")

    @property
    def prelude_error(self) -> str | None:
        at = self.status.find(b"E")
        return self.status[at + 1 :].decode(errors="replace") if at >= 0 else None


def _communicate(
    proc: subprocess.Popen[bytes],
    stdin: bytes,
    limits: SandboxLimits,
    status_fd: int,
    cancel: threading.Event | None,
) -> tuple[bytes, bytes, _Outcome]:
    """Feed stdin and read stdout/stderr incrementally, up to the output cap and the deadline.

    The wall clock of `limits.timeout_s` starts when the program does (the status pipe says
    so), so a slow sandbox start on a loaded machine never eats the program's time."""
    assert proc.stdout is not None and proc.stderr is not None
    outcome = _Outcome(deadline=time.monotonic() + _STARTUP_S)
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    room = limits.output_bytes
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(status_fd, selectors.EVENT_READ)
        if proc.stdin is not None:
            writer = proc.stdin
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        while sel.get_map():
            remaining = outcome.deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                break
            if cancel is not None and cancel.is_set():
                outcome.cancelled = True
                break
            for key, _ in sel.select(min(remaining, _POLL_S)):
                fd = key.fd
                if fd == status_fd:
                    data = os.read(fd, 4096)
                    if not data:
                        sel.unregister(fd)
                    elif not outcome.status and data.startswith(b"R"):
                        outcome.deadline = time.monotonic() + limits.timeout_s
                    outcome.status += data
                    continue
                if fd not in chunks:  # stdin
                    try:
                        pending = pending[os.write(fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the child closed stdin or exited
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        writer.close()
                    continue
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(fd)
                    continue
                chunks[fd].append(data[:room])
                room -= len(data)
                if room < 0:
                    outcome.output_limited = True
                    break
            if outcome.output_limited:
                break
    out, err = (b"".join(c) for c in chunks.values())
    return out, err, outcome


def _wait_exited(pid: int, deadline: float, cancel: threading.Event | None) -> bool:
    """Wait until `pid` exits without reaping it (its pgid stays reserved for the group kill)."""
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
            return False
        time.sleep(0.005)


def _classify(outcome: _Outcome, returncode: int | None, stderr: str) -> str:
    if outcome.cancelled:
        return "timeout"
    if not outcome.started or outcome.prelude_error is not None:
        return "sandbox_error"  # the program never ran: nothing of it to blame
    if outcome.timed_out:
        return "timeout"
    if outcome.output_limited:
        return "output_limit"
    if "MemoryError" in stderr[-2000:]:
        return "memory"
    if returncode is None:
        return "sandbox_error"
    if returncode < 0:
        return "timeout" if returncode == -signal.SIGXCPU else "killed"
    return "ok" if returncode == 0 else "error"


def _run(
    code: str, stdin: str, limits: SandboxLimits, cancel: threading.Event | None = None
) -> SandboxResult:
    start = time.monotonic()
    mode = isolation()
    workdir = tempfile.mkdtemp(prefix="wfopt-sandbox-")
    cgroup = None
    status_r = status_w = -1
    try:
        Path(workdir, "main.py").write_text(code, encoding="utf-8")
        cgroup = _make_cgroup(limits)
        nproc = None
        if cgroup is None and os.geteuid() != 0:
            nproc = _user_tasks(os.getuid()) + limits.max_processes
        status_r, status_w = os.pipe()
        try:
            proc = subprocess.Popen(
                _argv(mode, limits, workdir, cgroup, nproc, status_w),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=_env(workdir),
                start_new_session=True,  # no preexec_fn: safe from threads (see _PRELUDE)
                pass_fds=(status_w,),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return SandboxResult("sandbox_error", "", str(exc), None, time.monotonic() - start)
        finally:
            os.close(status_w)
        try:
            out, err, outcome = _communicate(proc, stdin.encode(), limits, status_r, cancel)
            if not (outcome.timed_out or outcome.output_limited or outcome.cancelled):
                outcome.timed_out = not _wait_exited(proc.pid, outcome.deadline, cancel)
        finally:
            # The leader is unreaped (or being killed), so its pgid cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            _kill_cgroup(cgroup)
            returncode = proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if mode == "bwrap" and 128 < returncode < 128 + signal.NSIG:
            returncode = 128 - returncode  # bwrap reports "killed by N" as exit 128+N
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        status = _classify(outcome, returncode, stderr)
        if status == "sandbox_error":
            reason = outcome.prelude_error or (
                f"the program did not start within {_STARTUP_S:.0f}s"
                if outcome.timed_out
                else f"{mode} exited {returncode} before the program started"
            )
            stderr = f"{reason}\n{stderr}".strip()
        return SandboxResult(status, stdout, stderr, returncode, time.monotonic() - start)
    except Exception as exc:  # the sandbox machinery failed, not the child
        log.exception("sandbox run failed")
        return SandboxResult("sandbox_error", "", repr(exc), None, time.monotonic() - start)
    finally:
        if status_r >= 0:
            with contextlib.suppress(OSError):
                os.close(status_r)
        _remove_cgroup(cgroup)
        _rmtree(workdir)


def _rmtree(path: str) -> None:
    """Remove the run's directory even if the code made parts of it unreadable."""

    def fix(func: Callable[..., object], failed: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
        with contextlib.suppress(OSError):
            func(failed)

    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):
        log.warning("sandbox: could not remove %s", path)


def run_python(
    code: str, *, stdin: str = "", limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """Run `code` as a program in the sandbox; never raises for anything the code does."""
    return _run(code, stdin, limits)


@functools.cache
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_MAX_CONCURRENT, thread_name_prefix="wfopt-sandbox")


async def arun_python(
    code: str, *, stdin: str = "", limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """`run_python` on a worker thread; cancelling the await kills the child."""
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor(), _run, code, stdin, limits, cancel)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        raise
