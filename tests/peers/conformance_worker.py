"""The conformance suite's Python pool worker (tests/conformance.rs): the
fixture's job routes (fixtures/jobs.rs) served with python/portpool_worker.py,
over the JSON job protocol of docs/protocol.md."""

import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

from portpool_worker import JobError, on_resume, on_suspend, route, serve  # noqa: E402

hooks = [0, 0]  # suspends, resumes


@on_suspend
def suspended():
    hooks[0] += 1


@on_resume
def resumed():
    hooks[1] += 1


@route("hook-counts")
def hook_counts(_, ctx):
    return hooks


@route("square")
def square(n, ctx):
    return n * n


@route("greet")
def greet(job, ctx):
    if not job["name"]:
        raise JobError("EmptyName")
    return f"hello, {job['name']}"


@route("divide")
def divide(job, ctx):
    a, b = job["a"], job["b"]
    if b == 0:
        raise JobError({"ByZero": {"a": a}})
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        q = -q
    return [q, a - q * b]


@route("boom")
def boom(message, ctx):
    raise RuntimeError(message)


@route("tick")
def tick(n, ctx):
    for i in range(n):
        ctx.progress(i)
    return n


@route("chaos")
def chaos(job, ctx):
    n, fault = job["n"], job["fault"]
    out = {"n": (n * 3 + 1) % (1 << 64), "refuse": False}
    if fault == "Panic":
        raise RuntimeError(f"chaos {n} panicked")
    if fault == "HandlerError":
        raise JobError(f"chaos {n} failed")
    if fault == "KillWorker":
        os._exit(7)
    if fault == "Hang":
        deadline = time.monotonic() + 60
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.001)
        return out
    if fault == "BadOutput":
        return {"not": "a ChaosOut"}
    return out


@route("who-am-i")
def who_am_i(_, ctx):
    return [ctx.worker_id, os.getpid()]


@route("touch-then-wait")
def touch_then_wait(job, ctx):
    with open(job["touch"], "w") as f:
        f.write("in progress")
    deadline = time.monotonic() + 60
    while not os.path.exists(job["gate"]) and time.monotonic() < deadline:
        time.sleep(0.001)
    return None


@route("answer-twice")
def answer_twice(n, ctx):
    # Breaks rule 1 on purpose: two answers for this job in one write (the
    # second is stale), then the library's own answer, a third.
    frame = json.dumps({"type": "done", "id": ctx._id, "ok": n}, separators=(",", ":")).encode()
    one = struct.pack("<IB", len(frame), 1) + frame
    conn = ctx._conn
    with conn._lock:
        conn._write_all(one + one)
    return n


@route("raw-answer")
def raw_answer(template, ctx):
    # Answers with the frame it was given, as written: a protocol broken
    # in the way the test chose. The library's own answer comes second: a
    # worker that broke the protocol is ended by then, and after a valid
    # frame it is a stale answer (rule 18).
    frame = template.replace("{id}", str(ctx._id)).encode()
    conn = ctx._conn
    if template == "cut-and-exit":
        # A header for 50 bytes, 10 of them, then a clean exit (with the
        # 5-byte header, 15 of 55 bytes).
        with conn._lock:
            conn._write_all(struct.pack("<IB", 50, 1) + b'{"type":"d')
        os._exit(0)
    with conn._lock:
        conn._write_all(struct.pack("<IB", len(frame), 1) + frame)
    return 0


@route("garbage")
def garbage(_, ctx):
    # Breaks the protocol on purpose: a frame that is not JSON.
    conn = ctx._conn
    with conn._lock:
        conn._write_all(b"\x05\x00\x00\x00\x01nope!")
    time.sleep(60)


if __name__ == "__main__":
    serve()
