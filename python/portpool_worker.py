"""A portpool pool worker in Python: serve a Rust pool's jobs (stdlib only).

Write the handlers, one per route (the Rust job type's ``NAME``), and call
``serve()``::

    from portpool_worker import JobError, route, serve

    @route("resize")
    def resize(job, ctx):
        if job["width"] <= 0:
            raise JobError("width must be positive")   # the job's typed error
        for step in range(10):
            if ctx.cancelled:                          # the job was cancelled
                raise JobError("cancelled")
            ctx.progress({"step": step})               # reaches the ticket
        return {"width": job["width"] // 2}            # the job's output

    if __name__ == "__main__":
        serve()

and on the Rust side::

    Pool::builder()
        .processes(4)
        .worker_command(Command::new("python3").arg("my_worker.py"))
        .job_codec(Codec::Json)
        .build()?

A job arrives as the JSON serde makes of the Rust job value (a struct is an
object, a newtype struct its inner value, a unit enum variant a string);
what the handler returns is encoded the same way and must decode as the
job's ``Output``; ``JobError(value)`` must decode as its ``Error``. Any other
exception fails that job alone as a panic, with its type and message; the
worker goes on. The worker ends when the supervisor says stop (after the
jobs it holds) or goes away (at once, even inside a handler).

The wire protocol is docs/protocol.md, sections 1-3 and 6.
"""

import json
import os
import queue
import socket
import struct
import sys
import threading
import time
import traceback
from itertools import repeat

__all__ = ["JobError", "Context", "route", "on_suspend", "on_resume", "serve"]

MAGIC = b"PORTPOOL"
VERSION = 1
ROLE_WORKER = 2
CODEC_JSON = 1
KIND_MESSAGE = 1
JOBS_VERSION = 2
MAX_FRAME = 256 << 20

_routes = {}
_suspend_hooks = []
_resume_hooks = []


class JobError(Exception):
    """Raise it from a handler to fail the job with ``value`` as its error
    (it must decode as the Rust job's ``Error`` type)."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


def route(name):
    """Registers the decorated function ``f(job, ctx)`` as the handler of
    route ``name``."""

    def register(f):
        if name in _routes:
            raise ValueError(f"route {name!r} is registered twice")
        _routes[name] = f
        return f

    return register


def on_suspend(f):
    """Registers ``f()`` to run when the pool suspends."""
    _suspend_hooks.append(f)
    return f


def on_resume(f):
    """Registers ``f()`` to run when the pool resumes."""
    _resume_hooks.append(f)
    return f


class Context:
    """What a handler can ask of its job: has it been cancelled, and send
    progress to its ticket."""

    def __init__(self, conn, job_id):
        self._conn = conn
        self._id = job_id
        self._cancel = False  # set by the reader thread (a plain flag: cheap to read)

    @property
    def cancelled(self):
        """True once the job was cancelled or timed out: return soon."""
        return self._cancel

    @property
    def worker_id(self):
        """This worker's slot number in its pool (``PORTPOOL_WORKER_ID``)."""
        return int(os.environ.get("PORTPOOL_WORKER_ID", "0"))

    def progress(self, value):
        """Sends ``value`` (anything ``json.dumps`` takes) to the ticket."""
        self._conn.send({"type": "progress", "id": self._id, "data": value})


class _Connection:
    """The port: frames over a socket or a pair of pipes."""

    def __init__(self, read_fd, write_fd):
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._lock = threading.Lock()

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self._write_fd, view)
            view = view[n:]

    def _read_exact(self, n):
        chunks = []
        while n:
            b = os.read(self._read_fd, min(n, 1 << 20))
            if not b:
                return None
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def hello(self):
        self._write_all(MAGIC + struct.pack("<HBB", VERSION, ROLE_WORKER, CODEC_JSON) + bytes(4))
        theirs = self._read_exact(16)
        if theirs is None:
            sys.exit("portpool worker: the supervisor went away during the hello")
        if theirs[:8] != MAGIC:
            sys.exit("portpool worker: the peer is not a portpool port")
        (version,) = struct.unpack("<H", theirs[8:10])
        if version != VERSION:
            sys.exit(f"portpool worker: protocol version mismatch: we speak {VERSION}, the peer {version}")
        if theirs[10] != 1:
            sys.exit(f"portpool worker: the peer's hello has role {theirs[10]}, not a pool's supervisor (1)")
        if theirs[11] != CODEC_JSON:
            sys.exit(
                "portpool worker: codec mismatch: the supervisor encodes its frames as postcard, this "
                "worker as JSON (build the pool with .job_codec(Codec::Json))"
            )

    def send(self, obj):
        payload = json.dumps(obj, separators=(",", ":")).encode()
        with self._lock:
            self._write_all(struct.pack("<IB", len(payload), KIND_MESSAGE) + payload)

    def recv(self):
        """The next frame's object; None at the end of the stream."""
        header = self._read_exact(5)
        if header is None:
            return None
        length, kind = struct.unpack("<IB", header)
        if length > MAX_FRAME:
            sys.exit(f"portpool worker: a frame of {length} bytes, over the limit")
        payload = self._read_exact(length)
        if payload is None:
            sys.exit("portpool worker: the supervisor's frame was cut short")
        if kind != KIND_MESSAGE:
            sys.exit(f"portpool worker: a frame of kind {kind}, which a worker does not take")
        return json.loads(payload)


def _take_port():
    value = os.environ.pop("PORTPOOL_PORT", None)
    if value is None:
        sys.exit("portpool worker: PORTPOOL_PORT is not set: this program is started by a portpool pool")
    if value.startswith("stdio:"):
        # The port is our stdin and stdout (a launcher such as ssh carries
        # them; a shell that then exec'd us set the variable with its pid,
        # now ours): keep prints off it.
        if value != f"stdio:{os.getpid()}":
            sys.exit("portpool worker: PORTPOOL_PORT was set for another process")
        read_fd, write_fd = os.dup(0), os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return _Connection(read_fd, write_fd)
    spec, _, pid = value.rpartition("@")
    kind, _, fds = spec.partition(":")
    try:
        pid = int(pid)
    except ValueError:
        sys.exit(f"portpool worker: PORTPOOL_PORT={value!r} is not a port this worker can take")
    if kind == "socket":
        if pid != os.getppid():
            sys.exit("portpool worker: PORTPOOL_PORT was set for another process")
        fd = int(fds)
        return _Connection(fd, fd)
    if kind == "pipes":
        if pid != os.getppid():
            sys.exit("portpool worker: PORTPOOL_PORT was set for another process")
        read_fd, write_fd = (int(x) for x in fds.split(","))
        return _Connection(read_fd, write_fd)
    sys.exit(f"portpool worker: PORTPOOL_PORT={value!r} is not a port this worker can take")


def _outcome(handler, job, ctx):
    """One job's result as the protocol's result object."""
    if handler is None:
        return {"failed": "this worker has no handler for the route"}
    try:
        return {"ok": handler(job, ctx)}
    except JobError as e:
        return {"error": e.value}
    except Exception as e:  # a panic: this job fails, the worker goes on
        traceback.print_exc()
        return {"panic": f"{type(e).__name__}: {e}"}


def _checked(result):
    """The result, or a failure if its value is not JSON."""
    try:
        json.dumps(result)
        return result
    except (TypeError, ValueError) as e:
        return {"failed": f"the handler's value is not JSON: {e}"}


def _run_batch(handler, jobs, ctx):
    """A batch's answer fields: ``{"ok": [outputs]}`` while every job
    succeeds (the cheap form), else ``{"results": [RESULT, ...]}``.

    A batch is sized by the pool to run for about a millisecond, so its
    cancel flag is looked at between jobs only once one has failed (and
    before it starts)."""
    if ctx._cancel:
        return {"results": [{"cancelled": True} for _ in jobs]}
    if handler is None:
        return {"results": [{"failed": "this worker has no handler for the route"} for _ in jobs]}
    outputs = []
    it = iter(jobs)
    try:
        # `map` and `list.extend` run the loop in C (a Python `for` costs
        # more than a tiny job); when a handler raises, the outputs before
        # it are kept and `it` stands just past the job that raised.
        outputs.extend(map(handler, it, repeat(ctx)))
        return {"ok": outputs}  # (`_send_batch` checks that it is JSON)
    except JobError as e:
        first = {"error": e.value}
    except Exception as e:  # a panic: this job fails, the others go on
        traceback.print_exc()
        first = {"panic": f"{type(e).__name__}: {e}"}
    results = [{"ok": v} for v in outputs]
    results.append(first)
    for job in it:
        if ctx._cancel:
            results.append({"cancelled": True})
        else:
            results.append(_outcome(handler, job, ctx))
    return {"results": [_checked(r) for r in results]}


def _send_batch(conn, job_id, nanos, answer):
    frame = {"type": "done_batch", "id": job_id, "nanos": nanos, **answer}
    try:
        conn.send(frame)
    except (TypeError, ValueError):
        # An output that is not JSON: each result on its own.
        results = [_checked({"ok": v}) for v in answer["ok"]]
        conn.send({"type": "done_batch", "id": job_id, "nanos": nanos, "results": results})


def serve():
    """Serves the pool's jobs until the supervisor says stop or goes away."""
    conn = _take_port()
    conn.hello()
    conn.send({"type": "routes", "jobs_version": JOBS_VERSION, "routes": sorted(_routes)})
    work = queue.Queue()
    contexts = {}  # id -> Context of jobs given and not yet answered
    waiting = {}  # id -> its jobs' count (None: a single job), not started yet
    answered = set()  # ids cancelled before they started, already answered
    lock = threading.Lock()

    def runner():
        while True:
            item = work.get()
            if item is None:
                os._exit(0)
            kind, job_id, name, jobs = item
            with lock:
                ctx = contexts.get(job_id)
                waiting.pop(job_id, None)
                skip = job_id in answered
            if skip:
                with lock:
                    contexts.pop(job_id, None)
                    answered.discard(job_id)
                continue
            handler = _routes.get(name)
            if kind == "job":
                result = _outcome(handler, jobs, ctx)
                try:
                    conn.send({"type": "done", "id": job_id, **result})
                except (TypeError, ValueError) as e:
                    conn.send({"type": "done", "id": job_id, "failed": f"the handler's value is not JSON: {e}"})
            else:
                started = time.monotonic_ns()
                answer = _run_batch(handler, jobs, ctx)
                _send_batch(conn, job_id, time.monotonic_ns() - started, answer)
            with lock:
                contexts.pop(job_id, None)

    threading.Thread(target=runner, name="portpool-runner", daemon=True).start()
    while True:
        try:
            frame = conn.recv()
        except (ValueError, OSError) as e:
            print(f"portpool worker: unreadable frame from the supervisor: {e}", file=sys.stderr)
            os._exit(1)
        if frame is None:
            # The supervisor went away: end now, even inside a handler.
            os._exit(0)
        kind = frame.get("type")
        if kind in ("job", "batch"):
            job_id = frame["id"]
            jobs = frame["job"] if kind == "job" else frame["jobs"]
            with lock:
                contexts[job_id] = Context(conn, job_id)
                waiting[job_id] = None if kind == "job" else len(jobs)
            work.put((kind, job_id, frame["route"], jobs))
        elif kind == "cancel":
            job_id = frame["id"]
            with lock:
                ctx = contexts.get(job_id)
                if ctx is not None:
                    ctx._cancel = True
                # Not started: answered now, so the pool need not wait for
                # its turn (the runner skips it).
                if job_id in waiting:
                    count = waiting.pop(job_id)
                    answered.add(job_id)
                    if count is None:
                        conn.send({"type": "done", "id": job_id, "cancelled": True})
                    else:
                        results = [{"cancelled": True}] * count
                        conn.send({"type": "done_batch", "id": job_id, "nanos": 0, "results": results})
        elif kind == "stop":
            work.put(None)
        elif kind == "suspend":
            for f in _suspend_hooks:
                f()
        elif kind == "resume":
            for f in _resume_hooks:
                f()
        else:
            print(f"portpool worker: unknown frame type {kind!r}", file=sys.stderr)
            os._exit(1)
