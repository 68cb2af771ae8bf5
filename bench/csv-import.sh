#!/usr/bin/env bash
# Speed, memory and crash-safety benchmark of csv_import, on SQLite, PostgreSQL or
# MySQL/MariaDB. Generates a CSV of about SIZE_MB megabytes (default 1024; 54 makes a million
# rows of 56 bytes), then, on a scratch database:
#
#   1. imports it with `jobsd run` into table `big` and prints the import rate (the file's rows
#      over the job's started_at..finished_at, as the database recorded them) and the daemon's
#      peak resident set (VmHWM);
#   2. imports it into table `big_crash`, kill -9s the daemon part-way, starts it again, prints
#      its peak resident set and checks that every row arrived exactly once;
#   3. on PostgreSQL, times `psql \copy` of the same file into a fresh table of the same shape,
#      once before step 1 and once after step 2 (the machine's load drifts), and prints the
#      import rate over their mean.
#
#   [DATABASE_URL=URL] bench/csv-import.sh [SIZE_MB]
#
# DATABASE_URL: postgres://… or mysql://… (any database of the server: the run makes a scratch
# database jobsd_bench_… beside it and drops it at exit; user and password as plain text), or
# unset for SQLite, a file in a temporary folder. Needs sqlite3, psql or mysql accordingly.
# JOBSD: the binary (default target/release/jobsd, built first). On a busy machine, run it
# under `nice`, and run it twice: the rates move with whatever else runs.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
url=${DATABASE_URL:-}

say() { echo "csv-import: $*" >&2; }
die() { say "$*"; exit 1; }

if [[ -n ${JOBSD:-} ]]; then
  jobsd=$(realpath "$JOBSD")
  [[ -x $jobsd ]] || die "JOBSD=$JOBSD is not an executable"
else
  cargo build --release --quiet
  jobsd=$PWD/target/release/jobsd
fi

work=$(mktemp -d)
scratch=jobsd_bench_$(tr -dc 'a-z0-9' </dev/urandom | head -c 8 || true)
pid=
created=
cleanup() {
  if [[ -n $pid ]]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n $created ]]; then
    admin "DROP DATABASE IF EXISTS $scratch$drop_tail" >/dev/null ||
      say "could not drop the scratch database $scratch"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The dialect, `admin` (SQL on the server, for the scratch database) and `sql` (SQL on the
# scratch database, one row a line, fields separated by white space).
drop_tail=
case $url in
  '')
    dialect=sqlite
    scratch_url=sqlite://$work/bench.db
    admin() { :; }
    sql() { sqlite3 -separator ' ' "$work/bench.db" "$1"; }
    ;;
  postgres://* | postgresql://*)
    dialect=postgres
    command -v psql >/dev/null || die "psql is needed (Debian: postgresql-client)"
    [[ $url =~ ^([a-z]+://[^/?]*)(/[^?]*)?(\?.*)?$ ]] || die "cannot read the database URL"
    scratch_url=${BASH_REMATCH[1]}/$scratch${BASH_REMATCH[3]}
    drop_tail=" WITH (FORCE)"
    admin() { psql -X -q -v ON_ERROR_STOP=1 "$url" -c "$1"; }
    sql() { psql -X -qAt -F ' ' -v ON_ERROR_STOP=1 "$scratch_url" -c "$1"; }
    ;;
  mysql://* | mariadb://*)
    dialect=mysql
    command -v mysql >/dev/null || die "mysql is needed (Debian: mariadb-client)"
    [[ $url =~ ^([a-z]+)://(([^:@/]*)(:([^@/]*))?@)?([^:/?]*)(:([0-9]+))?(/[^?]*)?(\?.*)?$ ]] ||
      die "cannot read the database URL"
    my_user=${BASH_REMATCH[3]:-root}
    export MYSQL_PWD=${BASH_REMATCH[5]}
    my_host=${BASH_REMATCH[6]:-127.0.0.1}
    my_port=${BASH_REMATCH[8]:-3306}
    scratch_url=${BASH_REMATCH[1]}://${BASH_REMATCH[2]}${my_host}:${my_port}/$scratch${BASH_REMATCH[10]}
    my() { mysql --protocol=tcp -h "$my_host" -P "$my_port" -u "$my_user" "$@"; }
    admin() { my -e "$1"; }
    sql() { my -N -B "$scratch" -e "$1"; }
    ;;
  *) die "DATABASE_URL must be postgres://…, mysql://… or unset (SQLite)" ;;
esac

# The table every import fills, in the dialect's types; the job's checkpointed rows; the
# job's run time in seconds, as the database recorded it.
case $dialect in
  sqlite)
    shape="(id INTEGER PRIMARY KEY, amount INTEGER, note TEXT) STRICT"
    rows_of() { echo "COALESCE(json_extract(progress, '\$.rows'), 0)"; }
    seconds="(julianday(finished_at) - julianday(started_at)) * 86400.0"
    ;;
  postgres)
    shape="(id BIGINT PRIMARY KEY, amount INTEGER, note TEXT)"
    rows_of() { echo "COALESCE((progress::json ->> 'rows')::bigint, 0)"; }
    seconds="EXTRACT(EPOCH FROM finished_at - started_at)"
    ;;
  mysql)
    shape="(id BIGINT PRIMARY KEY, amount INT, note TEXT)"
    rows_of() { echo "COALESCE(JSON_VALUE(progress, '\$.rows'), 0)"; }
    seconds="TIMESTAMPDIFF(MICROSECOND, started_at, finished_at) / 1e6"
    ;;
esac

cd "$work"
# About 56 bytes a row.
rows=$(( size_mb * 1024 * 1024 / 56 ))
say "generating $rows rows (~${size_mb} MB)"
{ echo "id,amount,note"; seq 1 "$rows" | awk '{ print $1 "," ($1 * 7) ",note-" $1 "-abcdefghijklmnopqrstuvwxyz" }'; } > big.csv
stat -c %s big.csv | awk '{ printf "file: %.1f MB\n", $1 / 1048576 }'

if [[ $dialect != sqlite ]]; then
  admin "CREATE DATABASE $scratch" >/dev/null
  created=1
fi
export DATABASE_URL=$scratch_url JOBSD_CSV_TABLES=big,big_crash JOBSD_CSV_DIR=$work \
  JOBSD_DEAD_AFTER=2s JOBSD_RETRY_BACKOFF=100ms RUST_LOG=warn
"$jobsd" migrate >/dev/null
echo "database: $dialect (scratch: $(sed -E 's#//[^@/]*@#//#' <<<"$scratch_url"))"

# Makes `table` and queues an import of the file into it; leaves the job's id in `job`.
queue_import() {
  sql "CREATE TABLE $1 $shape" >/dev/null
  sql "INSERT INTO jobs (kind, payload, max_attempts) VALUES ('csv_import', '{\"path\": \"big.csv\", \"table\": \"$1\"}', 3)" >/dev/null
  job=$(sql "SELECT MAX(id) FROM jobs")
}
progress() { sql "SELECT $(rows_of) FROM jobs WHERE id = $job"; }
status() { sql "SELECT status FROM jobs WHERE id = $job"; }
peak_kb() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# Runs the daemon until the job has `stop_at` rows checkpointed or has ended; leaves its pid
# in `pid`, its peak resident set so far (KiB) in `peak` and its CPU time (s) in `cpu`.
run_until() {
  local stop_at=$1 state
  "$jobsd" run >/dev/null 2>>daemon.log &
  pid=$!
  while :; do
    state=$(status)
    [[ $state == DONE || $state == FAILED || $state == CANCELLED ]] && break
    (( $(progress) >= stop_at )) && break
    kill -0 "$pid" 2>/dev/null || die "the daemon stopped; see its log: $(tail -n 5 daemon.log)"
    sleep 0.1
  done
  peak=$(peak_kb "$pid")
  cpu=$(cpu_s "$pid")
}
stop() { kill "-$1" "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

# PostgreSQL's own loader on the same file, into a fresh table of the same shape; its time (s).
copy_time() {
  local start end
  sql "CREATE TABLE $1 $shape" >/dev/null
  start=$(date +%s.%N)
  sql "\\copy $1 (id, amount, note) FROM 'big.csv' WITH (FORMAT csv, HEADER)" >/dev/null
  end=$(date +%s.%N)
  [[ $(sql "SELECT COUNT(*) FROM $1") == "$rows" ]] || die "psql \\copy did not load every row"
  awk -v s="$start" -v e="$end" 'BEGIN { print e - s }'
}
[[ $dialect == postgres ]] && copy_before=$(copy_time big_copy_before)

# 1. The rate, one run from start to end.
queue_import big
run_until $(( rows + 1 )); stop TERM
[[ $(status) == DONE ]] || die "the import ended $(status): $(sql "SELECT last_error FROM jobs WHERE id = $job")"
took=$(sql "SELECT $seconds FROM jobs WHERE id = $job")
rate=$(awk -v n="$rows" -v t="$took" 'BEGIN { printf "%.0f", n / t }')
echo "csv_import: $rows rows in $(printf '%.2f' "$took") s: $rate rows/s; peak RSS $(mib "$peak"); daemon CPU $cpu s"

# 2. Exactly once across a kill -9.
queue_import big_crash
run_until $(( rows * 2 / 5 )); peak1=$peak
[[ $(status) == DONE ]] && die "the import finished before the kill: use a bigger file"
stop 9
at_kill=$(progress); in_table=$(sql "SELECT COUNT(*) FROM big_crash")
echo "killed with kill -9 at $at_kill checkpointed rows; rows in the table: $in_table"
run_until $(( rows + 1 )); peak2=$peak; stop TERM
read -r count distinct <<<"$(sql "SELECT COUNT(*), COUNT(DISTINCT id) FROM big_crash")"
echo "job: $(status), attempts $(sql "SELECT attempts FROM jobs WHERE id = $job")"
echo "rows in file: $rows, in table: $count, distinct: $distinct"
echo "peak RSS: run killed $(mib "$peak1"), run after $(mib "$peak2")"
if [[ $count == "$rows" && $distinct == "$rows" && $in_table == "$at_kill" ]]; then
  echo "exactly once: yes"
else
  die "exactly once: NO"
fi
[[ $dialect == postgres ]] && copy_after=$(copy_time big_copy_after)

if [[ $dialect == postgres ]]; then
  awk -v n="$rows" -v a="$copy_before" -v b="$copy_after" -v r="$rate" 'BEGIN {
    printf "psql \\copy: %.0f rows/s before, %.0f rows/s after\n", n / a, n / b
    printf "csv_import / psql \\copy: %.2f\n", r / (n / ((a + b) / 2)) }'
fi
