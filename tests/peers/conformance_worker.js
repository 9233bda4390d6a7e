// The conformance suite's Node.js pool worker (tests/conformance.rs): the
// fixture's job routes (fixtures/jobs.rs) served with node/portpool_worker.js.
"use strict";

const fs = require("fs");
const path = require("path");
const { JobError, onResume, onSuspend, route, serve } = require(
  path.join(__dirname, "..", "..", "node", "portpool_worker.js"),
);

const hooks = [0, 0]; // suspends, resumes
onSuspend(() => hooks[0]++);
onResume(() => hooks[1]++);
route("hook-counts", () => hooks);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

route("square", (n) => n * n);

route("greet", (job) => {
  if (!job.name) throw new JobError("EmptyName");
  return `hello, ${job.name}`;
});

route("divide", (job) => {
  const { a, b } = job;
  if (b === 0) throw new JobError({ ByZero: { a } });
  const q = Math.trunc(a / b);
  return [q, a - q * b];
});

route("boom", (message) => {
  throw new Error(message);
});

route("tick", (n, ctx) => {
  for (let i = 0; i < n; i++) ctx.progress(i);
  return n;
});

route("chaos", async (job, ctx) => {
  const { n, fault } = job;
  const out = { n: n * 3 + 1, refuse: false };
  switch (fault) {
    case "Panic":
      throw new Error(`chaos ${n} panicked`);
    case "HandlerError":
      throw new JobError(`chaos ${n} failed`);
    case "KillWorker":
      process.exit(7);
      break;
    case "Hang": {
      const deadline = Date.now() + 60000;
      while (!ctx.cancelled && Date.now() < deadline) await sleep(1);
      return out;
    }
    case "BadOutput":
      return { not: "a ChaosOut" };
  }
  return out;
});

route("who-am-i", (_, ctx) => [ctx.workerId, process.pid]);

route("touch-then-wait", async (job) => {
  fs.writeFileSync(job.touch, "in progress");
  const deadline = Date.now() + 60000;
  while (!fs.existsSync(job.gate) && Date.now() < deadline) await sleep(1);
  return null;
});

route("garbage", async (_, ctx) => {
  // Breaks the protocol on purpose: a frame that is not JSON.
  ctx._port.write(Buffer.from([5, 0, 0, 0, 1, ...Buffer.from("nope!")]));
  await sleep(60000);
});

serve();
