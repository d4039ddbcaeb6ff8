"""Job processes forked from one process per worker that has done their imports once (the multiprocessing
"forkserver" idea, with the job folder as the only message).

A job process used to be a fresh interpreter: importing torch, transformers, PEFT and TRL took 8-10 s of CPU here
before the job could send its first event, for every job. The fork server is started at the first job; for each job
it imports that kind's entry module (once per kind, so it never imports more than the jobs asked for), then forks.
The forked process runs the job exactly as `python -m vlmflow_worker.jobs.child <folder>` would (`child.run`), with
that command line as its title (setproctitle), so `ps` and the tests' /proc scans name its job folder.

Why forking is safe here: the server is single-threaded and only imports; it never runs a torch operation (whose
OpenMP pool would not survive a fork) and never initialises CUDA. A job on a GPU worker sets its own
CUDA_VISIBLE_DEVICES after the fork, before CUDA reads it (child.use_job_gpus). If an import started a thread not
known to survive a fork, the server says so and the registry starts that job as a fresh interpreter instead.

Who is whose parent: the worker starts the server, the server forks the jobs and reaps them, reporting each exit code
to the worker. Each dies with its parent (PR_SET_PDEATHSIG), so a killed worker takes its jobs with it as before.
The worker signals a job directly (its pid), as it signals any job process.

Protocol, JSON lines: worker -> server `{"folder", "module"}`; server -> worker `{"ready"}` once at start,
`{"started": pid}` or `{"refused": why}` per request, `{"exited": pid, "code": c}` (c < 0: killed by signal -c).

VLMFLOW_JOB_FORKSERVER=0 starts every job as a fresh interpreter (the registry's fallback path).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import random
import select
import signal
import sys
import threading
from pathlib import Path

from vlmflow_worker.jobs import child, lease
from vlmflow_worker.log import setup_logging

log = logging.getLogger("vlmflow.jobs")
ENV = "VLMFLOW_JOB_FORKSERVER"
MODULE = "vlmflow_worker.jobs.forkserver"


def wanted() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off")


# ---- the server process ----


# The pipe to the worker, moved off fd 1 at start so that nothing an import prints can be taken for a message.
_replies_fd = 1


def _send(message: dict) -> None:
    os.write(_replies_fd, (json.dumps(message) + "\n").encode())


# Native threads known to survive a fork: jemalloc (pyarrow's allocator, started by `import pyarrow`) stops and
# restarts its background thread around fork() in its own atfork handlers.
FORK_SAFE_THREADS = {"jemalloc_bg_thd"}


def _unsafe_threads() -> list[str]:
    """This process's threads other than the main one and FORK_SAFE_THREADS, by name (native ones included: an
    import may start a C library's pool)."""
    if threading.active_count() > 1:
        return [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    names = []
    for task in os.listdir("/proc/self/task"):
        if int(task) != os.getpid():
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:
                continue  # ended meanwhile
    return [name for name in names if name not in FORK_SAFE_THREADS]


def _run_job(folder: Path, server_pid: int) -> None:
    """In the forked process: becomes the job process of `folder`, as child.main would, and never returns."""
    code = 70  # EX_SOFTWARE: the job could not even start (its log says why)
    try:
        out = os.open(folder / "child.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)
        os.close(_replies_fd)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        import setproctitle

        setproctitle.setproctitle(f"{sys.executable} -m vlmflow_worker.jobs.child {folder}")
        random.seed()  # the server's random state would be every job's, where fresh interpreters each draw their own
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        os.environ["VLMFLOW_PARENT_PID"] = str(server_pid)
        child.die_with_parent()
        setup_logging(os.environ.get("VLMFLOW_LOG_LEVEL", "INFO"))
        child.use_job_gpus(folder)
        code = child.run(folder)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        child.exit_now(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def serve() -> None:
    """The server's loop: a request a line on stdin, until stdin closes (the worker stopped or died)."""
    global _replies_fd
    _replies_fd = os.dup(1)
    os.dup2(2, 1)
    child.limit_threads()
    child.die_with_parent()
    setup_logging(os.environ.get("VLMFLOW_LOG_LEVEL", "INFO"))
    # What every job imports whatever its kind: the model loaders (torch, transformers) and, through JobContext, the
    # fault hooks (transformers' Trainer machinery: 4 s of CPU here). Each kind's module comes with its first job.
    for module in ("vlmflow_worker.models", "vlmflow_worker.faults"):
        importlib.import_module(module)
    _send({"ready": True})
    buffered = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        _reap()
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            request = json.loads(line)
            try:
                importlib.import_module(request["module"])
            except Exception:
                pass  # the job imports it again and reports the error as a typed failure
            threads = _unsafe_threads()
            if threads:
                _send({"refused": f"the fork server has threads after its imports ({threads}); forking is unsafe"})
                continue
            pid = os.fork()
            if pid == 0:
                _run_job(Path(request["folder"]), os.getppid())
            _send({"started": pid})
    # The worker is gone: its jobs are stopped by their own supervision (or die with this process).
    _reap()


# ---- the worker's side ----


class ForkedProcess:
    """A job process the fork server started: what the registry uses of asyncio.subprocess.Process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _set_exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set_result(code)


class ForkServer:
    """The worker's handle on its fork server: started at the first job, started again if it died."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._replies: asyncio.Queue[dict] = asyncio.Queue()
        self._children: dict[int, ForkedProcess] = {}
        self._lock = asyncio.Lock()

    async def start_job(self, folder: Path, module: str) -> ForkedProcess | None:
        """The job's process, forked; None when the fork server cannot start it (the caller starts a fresh one)."""
        async with self._lock:
            try:
                if not await self._ensure_running():
                    return None
                assert self._process is not None and self._process.stdin is not None
                self._process.stdin.write((json.dumps({"folder": str(folder), "module": module}) + "\n").encode())
                await self._process.stdin.drain()
                reply = await self._replies.get()
            except (BrokenPipeError, ConnectionResetError):
                return None
            if "started" not in reply:
                log.warning("the fork server did not start a job", extra={"folder": str(folder), **reply})
                return None
            return reply["process"]

    async def _ensure_running(self) -> bool:
        if self._process is not None and self._process.returncode is None:
            return True
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self._env
        )
        self._replies = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(self._process))
        reply = await self._replies.get()
        if not reply.get("ready"):
            log.warning("the fork server did not start; jobs start as fresh processes", extra=reply)
            return False
        log.info("fork server started", extra={"pid": self._process.pid})
        return True

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            message = json.loads(line)
            if "exited" in message:
                forked = self._children.pop(message["exited"], None)
                if forked is not None:
                    forked._set_exit(message["code"])
            else:
                if "started" in message:  # known before its exit can be read, which may be the next line
                    # The reply carries the process itself: a job that fails at once may have exited (and left
                    # _children) before start_job reads this reply.
                    message["process"] = self._children[message["started"]] = ForkedProcess(message["started"])
                await self._replies.put(message)
        code = await process.wait()
        await self._replies.put({"gone": code})  # a request waiting for a reply gets this one
        if self._children:
            log.error("the fork server exited with jobs running", extra={"code": code, "jobs": list(self._children)})
        orphans, self._children = self._children, {}
        for forked in orphans.values():  # they die with it (PR_SET_PDEATHSIG); nobody is left to tell their codes
            while lease.pid_alive(forked.pid):
                await asyncio.sleep(0.1)
            forked._set_exit(-signal.SIGKILL)

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            await self._reader


if __name__ == "__main__":
    serve()
