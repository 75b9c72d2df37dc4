#!/usr/bin/env python3
"""The two halves of cli/text-order.txt, read from a running consumer.

  text_order.py touched PID EXE   the functions on pages of EXE's code that
                                  PID has in its page tables, by address
  text_order.py merge HOT TOUCHED the sampled names first (as listed), then
                                  the touched ones not already there

Run by scripts/text-order.sh, which first makes the pages in the page tables
the pages the process touched (no read-ahead, the file out of the page
cache); see there. Names are mangled, as the linker sees them.
"""
import struct
import subprocess
import sys

PAGE = 4096


def load_segments(exe):
    """(file offset, virtual address, file size) of each LOAD segment."""
    out = subprocess.run(["readelf", "-lW", exe], capture_output=True, text=True, check=True)
    segments = []
    for line in out.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            segments.append((int(fields[1], 16), int(fields[2], 16), int(fields[4], 16)))
    return segments


def present_code_pages(pid, exe):
    """Link-time page numbers of EXE's executable pages present in PID."""
    segments = load_segments(exe)

    def link_address(offset):
        for start, vaddr, size in segments:
            if start <= offset < start + size:
                return offset - start + vaddr
        return None

    pages = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or "x" not in fields[1]:
                continue
            if fields[5].rsplit("/", 1)[-1] != exe.rsplit("/", 1)[-1]:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            for address in range(low, high, PAGE):
                pagemap.seek(address // PAGE * 8)
                (entry,) = struct.unpack("<Q", pagemap.read(8))
                if entry >> 63 & 1:  # bit 63: page present
                    linked = link_address(offset + address - low)
                    if linked is not None:
                        pages.add(linked // PAGE)
    return pages


def touched(pid, exe):
    pages = present_code_pages(pid, exe)
    out = subprocess.run(["nm", "-S", exe], capture_output=True, text=True, check=True)
    functions = []
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            address, size = int(fields[0], 16), max(int(fields[1], 16), 1)
            span = range(address // PAGE, (address + size - 1) // PAGE + 1)
            if any(page in pages for page in span):
                functions.append((address, fields[3]))
    print(f"text_order: {len(pages)} code pages present, {len(functions)} functions on them",
          file=sys.stderr)
    for _, name in sorted(functions):
        print(name)


def merge(hot, touched_list):
    seen = set()
    for path in (hot, touched_list):
        with open(path) as names:
            for name in (line.strip() for line in names):
                if name and name not in seen:
                    seen.add(name)
                    print(name)


def main(argv):
    if len(argv) == 4 and argv[1] == "touched":
        touched(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "merge":
        merge(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
