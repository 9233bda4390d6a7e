// A portpool pool worker in Node.js: serve a Rust pool's jobs (no
// dependencies). The wire protocol is docs/protocol.md, sections 1-3 and 6.
//
//   const { route, serve, JobError } = require("./portpool_worker");
//
//   route("resize", async (job, ctx) => {
//     if (job.width <= 0) throw new JobError("width must be positive"); // the typed error
//     for (let step = 0; step < 10; step++) {
//       if (ctx.cancelled) throw new JobError("cancelled");
//       ctx.progress({ step });                // reaches the ticket
//       await new Promise((r) => setTimeout(r, 1));
//     }
//     return { width: job.width >> 1 };       // the job's output
//   });
//   serve();
//
// and on the Rust side:
//   Pool::builder().processes(4)
//       .worker_command(Command::new("node").arg("my_worker.js"))
//       .job_codec(Codec::Json).build()?
//
// Handlers may be async: while one awaits, the worker reads its port, so a
// cancel reaches `ctx.cancelled`. Jobs start one at a time, in the order
// sent. A thrown JobError(value) is the job's typed error; any other
// exception fails that job alone as a panic. JavaScript numbers are
// doubles: integers beyond 2^53 lose precision.
//
// onSuspend(f) and onResume(f) register hooks that run when the pool is
// suspended and resumed (Runtime::suspend / Pool::suspend); no job comes
// between the two.

"use strict";

const fs = require("fs");
const net = require("net");

const MAGIC = Buffer.from("PORTPOOL");
const VERSION = 1;
const ROLE_SUPERVISOR = 1;
const ROLE_WORKER = 2;
const CODEC_JSON = 1;
const KIND_MESSAGE = 1;
const JOBS_VERSION = 2;
const MAX_FRAME = 256 * 1024 * 1024;

const routes = new Map();
const suspendHooks = [];
const resumeHooks = [];

/** Throw it from a handler to fail the job with `value` as its error. */
class JobError extends Error {
  constructor(value) {
    super(typeof value === "string" ? value : JSON.stringify(value));
    this.value = value;
  }
}

/** Registers `f(job, ctx)` (may be async) as the handler of route `name`. */
function route(name, f) {
  if (routes.has(name)) throw new Error(`route ${JSON.stringify(name)} is registered twice`);
  routes.set(name, f);
}

function onSuspend(f) {
  suspendHooks.push(f);
}

function onResume(f) {
  resumeHooks.push(f);
}

function fail(why) {
  process.stderr.write(`portpool worker: ${why}\n`);
  process.exit(1);
}

/** The port: where to read and how to write. */
function takePort() {
  const value = process.env.PORTPOOL_PORT;
  delete process.env.PORTPOOL_PORT;
  if (value === undefined) fail("PORTPOOL_PORT is not set: this program is started by a portpool pool");
  if (value.startsWith("stdio:")) {
    if (value !== `stdio:${process.pid}`) fail("PORTPOOL_PORT was set for another process");
    // The port is our stdin and stdout: keep console.log off it.
    const out = process.stdout;
    console.log = (...a) => process.stderr.write(a.join(" ") + "\n");
    return { input: process.stdin, write: (b) => out.write(b) };
  }
  const at = value.lastIndexOf("@");
  const [kind, fds] = value.slice(0, at).split(":");
  if (Number(value.slice(at + 1)) !== process.ppid) fail("PORTPOOL_PORT was set for another process");
  if (kind === "socket") {
    const sock = new net.Socket({ fd: Number(fds), readable: true, writable: true });
    return { input: sock, write: (b) => sock.write(b) };
  }
  if (kind === "pipes") {
    const [inFd, outFd] = fds.split(",").map(Number);
    const input = new net.Socket({ fd: inFd, readable: true, writable: false });
    const out = new net.Socket({ fd: outFd, readable: false, writable: true });
    return { input, write: (b) => out.write(b) };
  }
  fail(`PORTPOOL_PORT=${JSON.stringify(value)} is not a port this worker can take`);
}

class Context {
  constructor(port, id) {
    this._port = port;
    this._id = id;
    this.cancelled = false;
  }
  /** This worker's slot number in its pool. */
  get workerId() {
    return Number(process.env.PORTPOOL_WORKER_ID || "0");
  }
  /** Sends `value` (anything JSON.stringify takes) to the ticket. */
  progress(value) {
    send(this._port, { type: "progress", id: this._id, data: value });
  }
}

function send(port, obj) {
  const payload = Buffer.from(JSON.stringify(obj));
  const header = Buffer.alloc(5);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt8(KIND_MESSAGE, 4);
  port.write(Buffer.concat([header, payload]));
}

async function outcome(handler, job, ctx) {
  if (handler === undefined) return { failed: "this worker has no handler for the route" };
  try {
    const value = await handler(job, ctx);
    return { ok: value === undefined ? null : value };
  } catch (e) {
    if (e instanceof JobError) return { error: e.value };
    process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
    return { panic: `${e && e.name ? e.name : "Error"}: ${e && e.message !== undefined ? e.message : e}` };
  }
}

/** Serves the pool's jobs until the supervisor says stop or goes away. */
function serve() {
  const port = takePort();
  const hello = Buffer.alloc(16);
  MAGIC.copy(hello, 0);
  hello.writeUInt16LE(VERSION, 8);
  hello.writeUInt8(ROLE_WORKER, 10);
  hello.writeUInt8(CODEC_JSON, 11);
  port.write(hello);

  let buf = Buffer.alloc(0);
  let helloDone = false;
  const waiting = new Map(); // id -> its jobs' count (null: a single job), not started
  const contexts = new Map(); // id -> Context, until answered
  const answered = new Set(); // cancelled before they started, already answered
  let chain = Promise.resolve(); // jobs start one at a time, in order

  function run(kind, id, name, jobs) {
    const ctx = new Context(port, id);
    contexts.set(id, ctx);
    waiting.set(id, kind === "job" ? null : jobs.length);
    chain = chain.then(async () => {
      waiting.delete(id);
      if (answered.delete(id)) {
        contexts.delete(id);
        return;
      }
      const handler = routes.get(name);
      if (kind === "job") {
        send(port, { type: "done", id, ...(await outcome(handler, jobs, ctx)) });
      } else {
        const started = process.hrtime.bigint();
        const results = [];
        for (const job of jobs) {
          results.push(ctx.cancelled ? { cancelled: true } : await outcome(handler, job, ctx));
        }
        const nanos = Number(process.hrtime.bigint() - started);
        if (results.every((r) => "ok" in r)) {
          send(port, { type: "done_batch", id, nanos, ok: results.map((r) => r.ok) });
        } else {
          send(port, { type: "done_batch", id, nanos, results });
        }
      }
      contexts.delete(id);
    });
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "job":
        return run("job", frame.id, frame.route, frame.job);
      case "batch":
        return run("batch", frame.id, frame.route, frame.jobs);
      case "cancel": {
        const ctx = contexts.get(frame.id);
        if (ctx) ctx.cancelled = true;
        if (waiting.has(frame.id)) {
          // Not started: answered now (the chain skips it).
          const count = waiting.get(frame.id);
          waiting.delete(frame.id);
          answered.add(frame.id);
          if (count === null) send(port, { type: "done", id: frame.id, cancelled: true });
          else {
            const results = Array.from({ length: count }, () => ({ cancelled: true }));
            send(port, { type: "done_batch", id: frame.id, nanos: 0, results });
          }
        }
        return;
      }
      case "stop":
        chain = chain.then(() => process.exit(0));
        return;
      case "suspend":
        return suspendHooks.forEach((f) => f());
      case "resume":
        return resumeHooks.forEach((f) => f());
      default:
        fail(`unknown frame type ${JSON.stringify(frame.type)}`);
    }
  }

  port.input.on("data", (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (!helloDone) {
      if (buf.length < 16) return;
      const theirs = buf.subarray(0, 16);
      if (!theirs.subarray(0, 8).equals(MAGIC)) fail("the peer is not a portpool port");
      const version = theirs.readUInt16LE(8);
      if (version !== VERSION) fail(`protocol version mismatch: we speak ${VERSION}, the peer ${version}`);
      if (theirs[10] !== ROLE_SUPERVISOR) fail(`the peer's hello has role ${theirs[10]}, not a pool's supervisor (1)`);
      if (theirs[11] !== CODEC_JSON) {
        fail(
          "codec mismatch: the supervisor encodes its frames as postcard, this worker as JSON " +
            "(build the pool with .job_codec(Codec::Json))",
        );
      }
      helloDone = true;
      buf = buf.subarray(16);
      send(port, { type: "routes", jobs_version: JOBS_VERSION, routes: [...routes.keys()].sort() });
    }
    while (buf.length >= 5) {
      const len = buf.readUInt32LE(0);
      const kind = buf.readUInt8(4);
      if (len > MAX_FRAME) fail(`a frame of ${len} bytes, over the limit`);
      if (buf.length < 5 + len) break;
      if (kind !== KIND_MESSAGE) fail(`a frame of kind ${kind}, which a worker does not take`);
      const payload = buf.subarray(5, 5 + len);
      buf = buf.subarray(5 + len);
      let frame;
      try {
        frame = JSON.parse(payload.toString("utf8"));
      } catch (e) {
        fail(`unreadable frame from the supervisor: ${e.message}`);
      }
      onFrame(frame);
    }
  });
  // The supervisor went away: end now, even inside a handler.
  port.input.on("end", () => process.exit(0));
  port.input.on("error", () => process.exit(0));
}

module.exports = { JobError, Context, route, onSuspend, onResume, serve };
