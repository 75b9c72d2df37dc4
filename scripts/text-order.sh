#!/usr/bin/env bash
# Regenerates cli/text-order.txt (and cli/text-order.rustc, the rustc it
# fits, as `rustc -V` prints it): the functions a running gilmsg-consumer executes, which
# cli/build.rs has the linker place first (see there, and
# docs/benchmarks.md "Hot text first"). Run it after changes that move the
# consumer's hot path, and after a toolchain or dependency upgrade (the
# build warns when the rustc differs; a stale list costs memory, never
# correctness).
#
# Usage: build first, as yourself, then run this as root:
#   cargo build --release -p gilmsg-bench
#   cargo build --profile dist -p gilmsg-cli --bin gilmsg-consumer
#   sudo scripts/text-order.sh [SECONDS]        (default 40; CARGO_TARGET_DIR
#                                                is read, default target/)
#
# Needs root, perf, readelf, nm, fincore and python3. For the run it sets
# the read-ahead of the device holding the consumer to 0 and evicts the
# consumer from the page cache, so that the pages in the consumer's page
# tables are the pages it touched (with read-ahead the kernel maps up to
# 64 KiB around each one); the read-ahead is put back on exit. The list is:
#   1. the functions perf samples in the steady state, busiest first;
#   2. every function on a touched page (start-up included), by address.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-40}"
die() { echo "text-order: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "needs root (read-ahead, page cache)"
for tool in perf readelf nm fincore python3; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
target_dir="$(realpath "${CARGO_TARGET_DIR:-target}")"
consumer="$target_dir/dist/gilmsg-consumer"
bench="$target_dir/release/gilmsg-bench"
[[ -x "$consumer" && -x "$bench" ]] || die "build $consumer and $bench first (see the usage)"

# The read-ahead that applies to the consumer's file: its device's, or for
# a partition its disk's. (A filesystem with a read-ahead of its own, such
# as btrfs, is caught by the check after the eviction below.)
readahead="$(python3 - "$consumer" <<'EOF'
import os, sys
dev = os.stat(sys.argv[1]).st_dev
node = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
for path in (f"{node}/queue/read_ahead_kb", f"{node}/../queue/read_ahead_kb"):
    if os.path.exists(path):
        print(os.path.realpath(path))
        break
EOF
)"
[[ -n "$readahead" ]] || die "cannot find the read-ahead setting for $consumer's device"
saved="$(cat "$readahead")"
work="$(mktemp -d)"
bench_pid=""
restore() {
    echo "$saved" > "$readahead" || echo "text-order: could not restore $readahead to $saved" >&2
    if [[ -n "$bench_pid" ]]; then kill -- "-$bench_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap restore EXIT
echo 0 > "$readahead"
sync "$consumer"
python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$consumer"
cached="$(fincore --noheadings --raw --output PAGES "$consumer")"
[[ "$cached" == 0 ]] || die "$cached pages of $consumer stay cached (is it running?)"

# The soak in a session of its own, so that the exit trap stops all of it.
setsid "$bench" --only soak --soak "${seconds}s" --consumer-exe "$consumer" \
    --out "$work/soak" > "$work/bench.log" 2>&1 &
bench_pid=$!
pid=""
for _ in $(seq 100); do
    pid="$(pgrep -P "$bench_pid" -x gilmsg-consumer | head -n 1 || true)"
    [[ -n "$pid" ]] && break
    sleep 0.2
done
[[ -n "$pid" ]] || { cat "$work/bench.log" >&2; die "the soak's consumer never started"; }
# Half the run in the steady state, sampled; then the pages it has touched.
perf record -q -F 4999 -p "$pid" -o "$work/perf.data" -- sleep "$((seconds / 2))"
# With read-ahead really off, about as many pages are cached as the
# consumer touched (code, read-only data, data); many more mean a
# read-ahead this did not turn off, and a list padded with neighbours.
# (Counted before text_order.py reads the symbol table, which caches more.)
echo "text-order: $(fincore --noheadings --raw --output PAGES "$consumer") pages of the consumer cached" >&2
python3 scripts/lib/text_order.py touched "$pid" "$consumer" > "$work/touched.txt"
perf report -i "$work/perf.data" --no-demangle --stdio --sort sym --dsos gilmsg-consumer \
    -F overhead,sym 2>/dev/null \
    | awk '/%/ && $NF !~ /^0x/ { sub("%", "", $1); print $1, $NF }' \
    | sort -k1,1 -g -r | awk '{ print $2 }' > "$work/hot.txt"
wait "$bench_pid" || die "the soak failed: $(tail -n 5 "$work/bench.log")"
bench_pid=""
python3 scripts/lib/text_order.py merge "$work/hot.txt" "$work/touched.txt" > "$work/order.txt"
[[ -s "$work/order.txt" ]] || die "empty list"
mv "$work/order.txt" cli/text-order.txt
# The rustc that built it, as `rustc -V` prints it (its names fit that one).
readelf -p .comment "$consumer" | grep -o 'rustc version [^)]*)' | head -n 1 \
    | sed 's/^rustc version /rustc /' > cli/text-order.rustc
echo "text-order: $(wc -l < "$work/hot.txt") sampled + touched = $(wc -l < cli/text-order.txt) functions in cli/text-order.txt" >&2
