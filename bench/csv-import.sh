#!/usr/bin/env bash
# Memory and crash-safety benchmark of csv_import on the embedded SQLite database:
# generates a CSV of about SIZE_MB megabytes (default 1024), imports it with `jobsd run`,
# kill -9s the daemon part-way, starts it again, and prints the peak resident set of each run,
# the import rate, and whether every row arrived exactly once.
#
#   bench/csv-import.sh [SIZE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
cargo build --release --quiet
jobsd=$PWD/target/release/jobsd
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

# About 56 bytes a row.
rows=$(( size_mb * 1024 * 1024 / 56 ))
echo "generating $rows rows (~${size_mb} MB)"
{ echo "id,amount,note"; seq 1 "$rows" | awk '{ print $1 "," ($1 * 7) ",note-" $1 "-abcdefghijklmnopqrstuvwxyz" }'; } > big.csv
stat -c %s big.csv | awk '{ printf "file: %.0f MB\n", $1 / 1048576 }'

export DATABASE_URL=sqlite://bench.db JOBSD_CSV_TABLES=big JOBSD_CSV_DIR=$work \
  JOBSD_DEAD_AFTER=2s JOBSD_RETRY_BACKOFF=100ms RUST_LOG=warn
"$jobsd" migrate >/dev/null
sqlite3 bench.db "CREATE TABLE big (id INTEGER PRIMARY KEY, amount INTEGER, note TEXT) STRICT"
sqlite3 bench.db "INSERT INTO jobs (kind, payload, max_attempts) VALUES ('csv_import', '{\"path\": \"big.csv\", \"table\": \"big\"}', 3)"

progress() { sqlite3 bench.db "SELECT COALESCE(json_extract(progress, '\$.rows'), 0) FROM jobs WHERE id = 1"; }
status() { sqlite3 bench.db "SELECT status FROM jobs WHERE id = 1"; }
rss_kb() { awk '/VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Runs the daemon until `stop_at` rows are in (or the job ends); leaves its pid in `pid` and
# its peak resident set (KiB) in `peak`.
run_until() {
  local stop_at=$1 rss
  peak=0
  "$jobsd" run >/dev/null 2>>daemon.log &
  pid=$!
  while :; do
    rss=$(rss_kb "$pid"); (( rss > peak )) && peak=$rss
    [ "$(status)" = DONE ] && break
    (( $(progress) >= stop_at )) && break
    sleep 0.2
  done
}

start=$(date +%s.%N)
run_until $(( rows * 2 / 5 )); peak1=$peak
[ "$(status)" = DONE ] && { echo "the import finished before the kill: use a bigger file" >&2; exit 1; }
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
at_kill=$(progress); in_table=$(sqlite3 bench.db "SELECT COUNT(*) FROM big")
echo "killed with kill -9 at $at_kill checkpointed rows; rows in the table: $in_table"
run_until $(( rows + 1 )); peak2=$peak
end=$(date +%s.%N)
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

read -r count distinct <<<"$(sqlite3 -separator ' ' bench.db "SELECT COUNT(*), COUNT(DISTINCT id) FROM big")"
echo "job: $(status), attempts $(sqlite3 bench.db "SELECT attempts FROM jobs WHERE id = 1")"
echo "rows in file: $rows, in table: $count, distinct: $distinct"
awk -v a="$peak1" -v b="$peak2" 'BEGIN { printf "peak RSS: first run %.1f MiB, second run %.1f MiB\n", a / 1024, b / 1024 }'
awk -v n="$rows" -v s="$start" -v e="$end" 'BEGIN { printf "import rate: %.0f rows/s over both runs (%.0f s)\n", n / (e - s), e - s }'
if [ "$count" = "$rows" ] && [ "$distinct" = "$rows" ] && [ "$in_table" = "$at_kill" ]; then
  echo "exactly once: yes"
else
  echo "exactly once: NO" >&2
  exit 1
fi
