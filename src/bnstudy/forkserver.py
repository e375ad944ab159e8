"""A fork server per workflow execution, so that a job does not start by importing torch.

Why: on a 2-core machine the demo DAG's ~150 jobs each spent ~1.1 s importing torch (or pandas,
matplotlib and seaborn) and ~0.2 s tearing it down, against 1-4 s of work: a third of the DAG's
job time (benchmarks/dag_overhead.py). With `runtime.fork_server: true` (the default) the
Snakefile's `onstart` starts this server once per local execution; it imports those modules once
and forks a child per job. `python -m bnstudy <command>`, which every rule runs, hands the server
its arguments, working directory, environment and standard streams and waits for the child's exit
status; with no server to reach it runs the command itself. So Slurm jobs (the server is
local-only), `--sdm conda` (another interpreter) and commands typed by hand behave as before, and a
job's numbers do not depend on how it started (tests/test_forkserver.py trains a run both ways).

Protocol, one AF_UNIX stream connection per job:
  client -> server  8-byte length, JSON {argv, cwd, env, prefix, package}; fds 0, 1, 2 attached
  server -> client  {"pid": n} once forked (or {"refused": why}: the client then runs cold),
                    {"exit": status} once the server has reaped the child (a signal: -signum)
The client forwards SIGINT, SIGTERM and SIGHUP to the child. A client that disappears (SIGKILL)
closes its connection, and the server sends its child SIGTERM, as Snakemake would a cold job; a
server that disappears takes its children with it (PR_SET_PDEATHSIG). The server exits on
SIGTERM (Snakemake's onsuccess/onerror) or once the Snakemake process that started it is gone and
its last child has ended.

Linux only (fork after importing torch; the death signal). Nothing here imports torch at module
level: the client side runs in every job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

SOCKET_ENV = "BNSTUDY_FORK_SERVER"  # the socket's path, exported to the jobs of one execution
PACKAGE = str(Path(__file__).resolve().parent)
FOLDER_PREFIX = "bnstudy-fork-"  # the socket's folder, under the system's temporary directory
# what the jobs import: the server imports it once (bnstudy.cli imports the rest on demand)
PRELOAD = ("bnstudy.cli", "bnstudy.train", "bnstudy.analysis.run", "bnstudy.aggregate",
           "bnstudy.figures", "bnstudy.claims")
# libraries that start helper threads at import unless told not to; a fork copies only the
# forking thread, so the server must have exactly one (it checks, and refuses to serve otherwise)
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false",
                   "MPLBACKEND": "Agg"}
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HEADER = struct.Struct("!Q")


# ----------------------------------------------------------------------------------------------
# client: `python -m bnstudy` in every job


def run_forked(argv: list[str]) -> int | None:
    """Run `bnstudy <argv>` in a child of the execution's fork server and return its exit status;
    None when there is no server to use (the caller then runs the command itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path or not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "prefix": sys.prefix, "package": PACKAGE}).encode()
        socket.send_fds(sock, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        replies = sock.makefile("r", encoding="utf-8")
        first = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):
        sock.close()
        return None  # no server (not yet, or not any more), or a closed standard stream
    if "pid" not in first:
        sock.close()
        return None  # refused (another interpreter or checkout): nothing has run yet
    child = first["pid"]

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    try:
        last = replies.readline()
    except OSError:
        last = ""
    if not last:
        # the server died; its death signal stops the child: wait until it has (a retry must not
        # find it still writing the run folder)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _exists(child):
            time.sleep(0.1)
        print("bnstudy: the fork server went away while this job ran (its process was stopped); "
              "rerun the job", file=sys.stderr)
        return 1
    status = json.loads(last)["exit"]
    return status if status >= 0 else 128 - status


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# the Snakefile's side: start and stop


class Handle:
    """The running server of this execution (see `start`)."""

    def __init__(self, process, folder: Path):
        self.process, self.folder = process, folder

    @property
    def socket(self) -> Path:
        return self.folder / "socket"

    def stop(self, timeout: float = 30.0) -> None:
        import shutil
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        if os.environ.get(SOCKET_ENV) == str(self.socket):
            del os.environ[SOCKET_ENV]


def start(log: Path) -> Handle | None:
    """Start the server in the background and export its socket to the jobs started from now on.

    Returns at once: jobs that start while it is still importing run cold. The server is in its
    own session, so a Ctrl-C at the terminal reaches the jobs' clients (which forward it), not it.
    None on platforms without fork."""
    import atexit
    import subprocess
    import tempfile

    if not sys.platform.startswith("linux"):
        return None
    # a short local path (AF_UNIX paths are limited to 107 bytes; results/ may be deep or on NFS)
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bnstudy.forkserver", str(folder / "socket"), str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != SOCKET_ENV})
    handle = Handle(process, folder)
    os.environ[SOCKET_ENV] = str(handle.socket)
    atexit.register(handle.stop)  # however Snakemake ends (the server also watches for that)
    return handle


# ----------------------------------------------------------------------------------------------
# the server


def source_stamp() -> list[tuple[str, int]]:
    """The package's source files and their modification times: a server whose sources changed
    since it started would run old code in some modules and new code in those the job imports
    itself, so it refuses (the job then runs cold, all new)."""
    return sorted((str(f), f.stat().st_mtime_ns) for f in Path(PACKAGE).rglob("*.py"))


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _log(message: str) -> None:
    with contextlib.suppress(OSError):  # a full disk must not stop the jobs
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The request and the client's three fds (closed here if the request is bad). A client
    sends it at once after connecting; the short timeout bounds a stalled one."""
    conn.settimeout(2)
    fds: list[int] = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        if len(data) < _HEADER.size or len(fds) != 3:
            raise ValueError("malformed request")
        size, data = _HEADER.unpack(data[:_HEADER.size])[0], data[_HEADER.size:]
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ValueError("truncated request")
            data += chunk
        request = json.loads(data)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def _refusal(request: dict, stamp: list) -> str | None:
    """Why this server must not run the request (the client then runs it itself), or None."""
    if (request.get("prefix"), request.get("package")) != (sys.prefix, PACKAGE):
        return f"the job runs {request.get('prefix')} {request.get('package')}, the server {sys.prefix} {PACKAGE}"
    if source_stamp() != stamp:
        return f"the sources under {PACKAGE} changed since the server started"
    return None


def _run_child(request: dict, fds: list[int], inherited: list, server: int) -> None:
    """In the forked child: become the job (its streams, directory, environment), run it, exit.
    Never returns: whatever happens, the child ends in os._exit, not in the server's loop."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for resource in inherited:  # the server's sockets and selector: not the job's
            resource.close()
        _die_with_parent()
        if os.getppid() != server:  # the server died before the death signal was set
            os._exit(1)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["bnstudy", *request["argv"]]
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            # Snakemake's allotment for the job; torch read this variable when the server
            # imported it, not now (train and analyze set their threads again, explicitly)
            import torch

            torch.set_num_threads(int(threads))
        from .cli import exit_now, run

        try:
            code = run(request["argv"])
        except KeyboardInterrupt:  # as a fresh process ends on Ctrl-C: traceback, then the signal
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        exit_now(code)
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(1)
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """SIGTERM to this process when the server dies (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def serve(path: Path, parent: int) -> None:
    """Import what the jobs import, then fork a child per request until told to stop."""
    import ctypes  # noqa: F401  (for the children's PR_SET_PDEATHSIG: imported once, here)
    import gc
    import importlib
    import selectors

    os.environ.update(SINGLE_THREADED)
    started, stamp = time.perf_counter(), source_stamp()
    for name in PRELOAD:
        importlib.import_module(name)
    if _thread_count() != 1:
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
        _log(f"not serving: importing {', '.join(PRELOAD)} started threads {names}, and a fork "
             "copies only one; the jobs run without the fork server")
        return
    # the imported objects go to the permanent generation: the children's collections do not
    # touch (and so copy) the pages the server shares with them
    gc.collect()
    gc.freeze()

    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())

    # bound under another name and renamed: a socket file that exists is listening
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(path.name + ".new")
    listener.bind(str(staging))
    listener.listen(64)
    os.rename(staging, path)
    _log(f"serving {path} (imports took {time.perf_counter() - started:.1f} s; pid {os.getpid()})")

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "wake")
    jobs: dict[int, socket.socket] = {}
    served = 0
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "wake":
                wake_read.recv(4096)
            elif key.data == "accept":
                conn, _ = listener.accept()
                try:
                    request, fds = _read_request(conn)
                except (OSError, ValueError) as err:
                    _log(f"dropped a request: {err}")
                    conn.close()
                    continue
                refused = _refusal(request, stamp)
                if refused:
                    for fd in fds:
                        os.close(fd)
                    _log(f"refused a job: {refused}")
                    with contextlib.suppress(OSError):
                        conn.sendall((json.dumps({"refused": refused}) + "\n").encode())
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                me = os.getpid()
                pid = os.fork()
                if pid == 0:
                    _run_child(request, fds, [selector, listener, wake_read, wake_write, conn, *jobs.values()],
                               server=me)
                for fd in fds:
                    os.close(fd)
                jobs[pid] = conn
                try:
                    conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
                    selector.register(conn, selectors.EVENT_READ, pid)
                except OSError:
                    os.kill(pid, signal.SIGTERM)  # its client is gone already
                served += 1
                _log(f"job {served} (pid {pid}): {' '.join(request['argv'][:1])}")
            else:  # a client's connection: it sends nothing after its request, so this is EOF
                pid = key.data
                selector.unregister(key.fileobj)
                _log(f"the client of pid {pid} went away: SIGTERM")
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        while jobs:  # reap, and report each status to its client
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = jobs.pop(pid)
            try:
                selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                conn.sendall((json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n").encode())
            except OSError:
                pass
            conn.close()
        orphaned = os.getppid() != parent
        if (stopping or orphaned) and listener.fileno() != -1:
            selector.unregister(listener)
            listener.close()
            path.unlink(missing_ok=True)
            if path.parent.name.startswith(FOLDER_PREFIX):  # start()'s folder, also after a kill -9
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            _log("stopping: " + ("SIGTERM" if stopping else "Snakemake is gone")
                 + (f"; waiting for {len(jobs)} jobs" if jobs else ""))
            if stopping:
                for pid in jobs:  # the jobs would get it from the death signal anyway
                    os.kill(pid, signal.SIGTERM)
        if listener.fileno() == -1 and not jobs:
            _log(f"stopped after {served} jobs")
            return


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
