// graphile-worker's side of bench/compare-peers.sh, run with Node 22 from the scratch folder
// that holds node_modules. DATABASE_URL names the scratch database.
//
//   node graphile.mjs migrate      installs graphile-worker's schema
//   node graphile.mjs run JOBS     W1 then W2 in one worker process, then one JSON line on stdout
//
// W1 drain: JOBS no-op jobs are already queued (the script adds them with add_jobs); the worker
// is started with the throughput settings of graphile-worker's performance page; jobs/s is
// counted from this process's start (like jobsd's bench, which counts from spawning the daemon)
// until the handler ran JOBS times and the jobs table is empty (completions are committed);
// w1_startup_seconds says how much of that went to starting Node and the worker.
// The peak resident set (VmHWM) is read right after W1.
// W2 pickup: with the same worker idle, 200 `SELECT graphile_worker.add_job(...)` statements
// 20 ms apart from a separate connection; each payload carries the time the statement was
// sent, and the handler takes its own start time against it: one process, one clock.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { Logger, run, runMigrations } from "graphile-worker";
import pg from "pg";

const connectionString = process.env.DATABASE_URL;
const [mode, jobsArg] = process.argv.slice(2);
const PICKUPS = 200;

// Warnings and errors only: a line per job would measure the console.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile ${level}: ${message}`);
});

const preset = {
  worker: {
    connectionString,
    concurrentJobs: 24,
    maxPoolSize: 25,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const peakRssMib = () => {
  const line = readFileSync("/proc/self/status", "utf8").match(/^VmHWM:\s+(\d+)/m);
  return line ? Number(line[1]) / 1024 : null;
};
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.round((p / 100) * (sorted.length - 1)))];

if (mode === "migrate") {
  await runMigrations({ preset, logger });
} else if (mode === "run") {
  const jobs = Number(jobsArg);
  let done = 0;
  let failed = 0;
  let allDone;
  const drained = new Promise((resolve) => (allDone = resolve));
  const pickups = [];
  let allPicked;
  const picked = new Promise((resolve) => (allPicked = resolve));

  const taskList = {
    noop: async (payload) => {
      if (payload && typeof payload.sent === "number") {
        pickups.push(performance.now() - payload.sent);
        if (pickups.length === PICKUPS) allPicked();
      } else if (++done === jobs) {
        allDone();
      }
    },
  };

  const runner = await run({ preset, logger, taskList, noHandleSignals: true });
  const startupSeconds = performance.now() / 1000;
  runner.events.on("job:error", () => failed++);
  const client = new pg.Client({ connectionString });
  await client.connect();

  await drained;
  for (;;) {
    const { rows } = await client.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
    if (rows[0].n === 0) break;
    await sleep(20);
  }
  // performance.now() counts from this process's start.
  const w1Seconds = performance.now() / 1000;
  const peak = peakRssMib();

  await sleep(1000);
  for (let i = 0; i < PICKUPS; i++) {
    await client.query("SELECT graphile_worker.add_job('noop', json_build_object('sent', $1::float8))", [
      performance.now(),
    ]);
    await sleep(20);
  }
  await picked;
  await client.end();
  await runner.stop();

  pickups.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      jobs,
      failed,
      w1_seconds: w1Seconds,
      w1_startup_seconds: startupSeconds,
      w1_jobs_per_second: jobs / w1Seconds,
      w2_pickup_ms_p50: percentile(pickups, 50),
      w2_pickup_ms_p95: percentile(pickups, 95),
      w2_pickup_ms_p99: percentile(pickups, 99),
      peak_rss_mib: peak,
      node: process.version,
    }),
  );
} else {
  console.error("usage: graphile.mjs migrate | run JOBS");
  process.exit(2);
}
