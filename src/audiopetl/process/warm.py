"""Warm start for the workflow's local jobs: a command runs in a fork of a process that has
already imported torch, transformers and peft, instead of importing them itself.

Why: every job of a study is a fresh process, and on a small study the imports are most of the
work (5-6 s per job on 2 cores against 2-3 s of training; `benchmarks/default_study.py` prints
the share). One server per (user, Python, installed code, environment) imports everything once;
`audiopetl COMMAND` connects to it over a Unix socket, hands over its argv, working folder,
environment, umask and its stdin/stdout/stderr, and the server forks a child that runs the
command exactly as `main` would, then reports its exit status. The fork shares nothing with
other jobs but the imported modules, so a run's results are the same bytes as a cold run's.

Semantics kept for the workflow and its tests:
- signals sent to the command (SIGTERM, SIGUSR1, SIGINT, SIGHUP: Snakemake's cancel, a SLURM
  warning) are forwarded to the child; a command killed outright (SIGKILL) takes its child with
  it (the child notices the closed connection at once and kills itself);
- the exit status is the child's, 128 + N when signal N killed it;
- any trouble reaching a server (none can start, another user's socket, a stale one) falls back
  to running the command in the calling process, cold.

On by default only where the Snakefile sets ``AUDIOPETL_WARM=1`` for local runs; never inside a
SLURM job (each job there is its own allocation) nor on a machine with an NVIDIA GPU (CUDA
does not survive a fork, and there the imports are a small share of a job). A server exits
after ``IDLE_S`` seconds without work, and a change to audiopetl's code, the Python or the
environment reaches a new server (the old one idles out).

Written here because no maintained library offers a fork server for Python CLIs that passes
file descriptors and forwards signals (multiprocessing's forkserver serves its own pools only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

ENV = "AUDIOPETL_WARM"
SERVER_ENV = "AUDIOPETL_WARM_SERVER"  # set in a warm child: its server's pid
IDLE_S = 20.0
CONNECT_S = 120.0  # how long a client waits for a server to finish its imports
FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
# Variables that differ between jobs of one study and that no import reads: left out of the
# server's identity (the child gets the job's own values all the same).
PER_JOB = ("PWD", "OLDPWD", "SHLVL", "_", "AUDIOPETL_TIMINGS")


def wanted() -> bool:
    return (
        os.environ.get(ENV) == "1"
        and "SLURM_JOB_ID" not in os.environ
        and sys.platform.startswith("linux")
        and not gpu_visible()
    )


def gpu_visible() -> bool:
    """An NVIDIA GPU this process could use. CUDA must not be initialised before a fork, and
    an import may touch it; on a GPU the imports are a small part of a job anyway. Asked of the
    device files, without importing torch (the client stays light)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


def server_key() -> str:
    """Who may serve this command: the same user, Python, import path, installed packages (a
    site folder's mtime changes when a package is added or removed), audiopetl code and
    environment."""
    from audiopetl.core.checksums import code_fingerprint

    env = {k: v for k, v in os.environ.items() if k not in PER_JOB}
    sites = [(entry, _mtime(entry)) for entry in sys.path]
    identity = [os.getuid(), sys.executable, sites, code_fingerprint(), sorted(env.items())]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return None


def _address(key: str) -> str:
    return f"\0audiopetl-warm-{key}"  # Linux's abstract namespace: no file to clean up


# -- the client: `audiopetl COMMAND` ----------------------------------------------------------


def run(argv: Sequence[str], runner: str, preload: Sequence[str]) -> int | None:
    """Run a command in a warm server's child: ``runner`` ("module:function", given ``argv``
    and returning the exit status) is what the child calls; ``preload``, the modules a server
    imports before it forks (the callers' heavy dependencies: this module knows none of them).
    The command's exit status, or None when no server could be used (the caller then runs the
    command itself)."""
    from audiopetl.process import timings

    key = server_key()
    conn = _connect(key, preload)
    if conn is None:
        return None
    request = {
        "argv": [sys.argv[0], *argv],
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": _umask(),
        "path": sys.path,
        "started": timings.process_started(),
        "runner": runner,
    }
    payload = json.dumps(request).encode()
    try:
        socket.send_fds(conn, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
    except OSError:
        conn.close()
        return None

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            conn.send(bytes([signum]))

    for sig in FORWARDED:
        signal.signal(sig, forward)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            break
        reply += chunk
    if not reply.endswith(b"\n"):
        print("audiopetl: the warm process running this command vanished", file=sys.stderr)
        return 1
    return int(reply.decode().strip())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _connect(key: str, preload: Sequence[str]) -> socket.socket | None:
    deadline = time.monotonic() + CONNECT_S
    started: subprocess.Popen[bytes] | None = None
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(_address(key))
            return conn
        except OSError:
            conn.close()
        if started is None:
            started = subprocess.Popen(
                [sys.executable, "-m", "audiopetl.process.warm", key, *preload],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outlives this job, and Snakemake's kill of its group
                cwd="/",
            )
        elif started.poll() not in (None, 0):
            return None  # our server failed to start; another's may not exist either
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


# -- the server -------------------------------------------------------------------------------


def serve(key: str, preload: Sequence[str]) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(_address(key))
    except OSError:
        return  # another server of this key is starting or running: the client will find it
    import importlib

    for name in preload:
        importlib.import_module(name)
    listener.listen(64)
    listener.settimeout(0.5)
    children: dict[int, socket.socket] = {}
    idle_since = time.monotonic()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            if _peer_uid(conn) != os.getuid():
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in children.values():
                    other.close()
                _child(conn)  # never returns
            children[pid] = conn
        for pid, status in _reaped():
            conn = children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):  # killed before it could report: say so for it
                with contextlib.suppress(OSError):
                    conn.sendall(f"{128 + os.WTERMSIG(status)}\n".encode())
            conn.close()
        if children:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > IDLE_S:
            return


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _reaped() -> list[tuple[int, int]]:
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    (size,) = struct.unpack("!I", header)
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise ConnectionError("the client left")
        payload += chunk
    return json.loads(payload), fds


def _child(conn: socket.socket) -> None:
    """Become the client's command: its streams, folder, environment; run, report, exit."""
    code = 1
    try:
        os.setpgid(0, 0)
        request, fds = _receive(conn)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own streams)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(  # noqa: SIM115
            2, "w", buffering=1, errors="backslashreplace", closefd=False
        )
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.umask(request["umask"])
        sys.argv = list(request["argv"])
        sys.path[:] = request["path"]  # later imports search where the command's would
        for sig in FORWARDED:
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, default)
        threading.Thread(target=_watch, args=(conn,), daemon=True).start()
        os.environ[SERVER_ENV] = str(os.getppid())
        import importlib

        from audiopetl.process import timings

        timings.adopt_start(request["started"])
        module, _, function = request["runner"].partition(":")
        code = getattr(importlib.import_module(module), function)(sys.argv[1:])
    except BaseException:  # a bug: its traceback goes where a cold run's would
        traceback.print_exc()
        code = 1
    finally:
        try:
            conn.sendall(f"{code}\n".encode())
        finally:
            os._exit(code)


def _watch(conn: socket.socket) -> None:
    """Forward the client's signals to this process; die with the client."""
    while True:
        try:
            data = conn.recv(16)
        except OSError:
            data = b""
        if not data:
            os.kill(os.getpid(), signal.SIGKILL)
        for signum in data:
            os.kill(os.getpid(), signum)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
