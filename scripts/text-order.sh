#!/usr/bin/env bash
# Regenerates cli/text-order.txt: the functions a running gilmsg-consumer
# executes, which cli/build.rs has the linker place first (see there, and
# docs/benchmarks.md "Hot text first"). Run it after changes that move the
# consumer's hot path, or after a toolchain or dependency upgrade renames
# many functions (a stale list costs memory, never correctness).
#
# Usage: sudo scripts/text-order.sh [SECONDS]    (default 40)
#
# Needs root, perf, readelf, nm and python3. For the run it sets the
# read-ahead of the disk holding target/ to 0 and evicts the consumer from
# the page cache, so that the pages in the consumer's page tables are the
# pages it touched (with read-ahead the kernel maps up to 64 KiB around
# each one); the read-ahead is put back on exit. The list is:
#   1. the functions perf samples in the steady state, busiest first;
#   2. every function on a touched page (start-up included), by address.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-40}"
[[ "$(id -u)" == 0 ]] || { echo "text-order: needs root (read-ahead, page cache)" >&2; exit 1; }
for tool in perf readelf nm python3; do
    command -v "$tool" >/dev/null || { echo "text-order: needs $tool" >&2; exit 1; }
done

target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release -p gilmsg-bench
cargo build --profile dist -p gilmsg-cli --bin gilmsg-consumer
consumer="$(realpath "$target_dir")/dist/gilmsg-consumer"
work="$(mktemp -d)"

device="$(df --output=source "$consumer" | tail -n 1)"
disk="$(lsblk -no pkname "$device" 2>/dev/null || true)"
readahead="/sys/block/${disk:-$(basename "$device")}/queue/read_ahead_kb"
saved="$(cat "$readahead")"
bench_pid=""
restore() {
    echo "$saved" > "$readahead"
    [[ -n "$bench_pid" ]] && kill "$bench_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap restore EXIT
echo 0 > "$readahead"
python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$consumer"

"$target_dir"/release/gilmsg-bench --only soak --soak "${seconds}s" --consumer-exe "$consumer" \
    --out "$work/soak" > "$work/bench.log" 2>&1 &
bench_pid=$!
pid=""
for _ in $(seq 100); do
    pid="$(pgrep -f "^$consumer " | head -n 1 || true)"
    [[ -n "$pid" ]] && break
    sleep 0.2
done
[[ -n "$pid" ]] || { echo "text-order: the soak's consumer never started" >&2; cat "$work/bench.log" >&2; exit 1; }
# Half the run in the steady state, sampled; then the pages it has touched.
perf record -q -F 4999 -p "$pid" -o "$work/perf.data" -- sleep "$((seconds / 2))"
python3 scripts/lib/text_order.py touched "$pid" "$consumer" > "$work/touched.txt"
perf report -i "$work/perf.data" --no-demangle --stdio --sort sym --dsos gilmsg-consumer \
    -F overhead,sym 2>/dev/null | awk '/%/ { print $NF }' > "$work/hot.txt"
wait "$bench_pid" || true
bench_pid=""
python3 scripts/lib/text_order.py merge "$work/hot.txt" "$work/touched.txt" > cli/text-order.txt
echo "text-order: $(wc -l < "$work/hot.txt") sampled + touched = $(wc -l < cli/text-order.txt) functions in cli/text-order.txt" >&2
