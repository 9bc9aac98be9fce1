#!/usr/bin/env python3
"""A WAL writer that follows the walcompactd online-compaction lock protocol.

See docs/PROTOCOL.md. For every append: flock(LOCK_EX) on "<wal>.lock", reopen the WAL if
its (st_dev, st_ino) changed or the path is missing, write the whole line in one os.write,
optionally fsync, unlock. Such a writer may keep appending while walcompactd compacts the
WAL in online mode.

As a script it writes --count transactions (a PREPARE then a COMMIT line each), e.g.
    protocol_writer.py --wal /data/wal.log --writer-id w1 --count 1000 --fsync --rate 500
Transaction n (0 <= n < count) has tx_id "<writer-id>-<n>" and data {"writer": ID, "seq": n}.
"""

import argparse
import fcntl
import json
import os
import sys
import time


class ProtocolWriter:
    """Appends JSON lines to one WAL under the online-compaction lock protocol."""

    def __init__(self, wal_path, fsync=False, mode=0o644, mirror=None):
        self.path = wal_path
        self.fsync = fsync
        self.mode = mode
        # Optional audit copy, appended under the same lock: the uncompacted stream.
        self.mirror_fd = None if mirror is None else os.open(
            mirror, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        # The lock file is never renamed or deleted; read-only is enough for flock.
        self.lock_fd = os.open(wal_path + ".lock", os.O_RDONLY | os.O_CREAT, mode)
        self.fd = None
        self.ident = None

    def _reopen(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
        st = os.fstat(fd)  # identity of the file our writes go to
        if self.fd is not None:
            os.close(self.fd)  # the old inode (now the backup) gets nothing more
        self.fd, self.ident = fd, (st.st_dev, st.st_ino)

    def append(self, record):
        line = json.dumps(record)
        if "\n" in line:
            raise ValueError("a WAL line must not contain a newline")
        data = (line + "\n").encode("utf-8")
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            # Check the inode UNDER the lock: the compactor renames only while holding it.
            # Checked before locking, a swap in between would send the line to the old inode.
            try:
                st = os.stat(self.path)
                current = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                current = None
            if self.fd is None or current != self.ident:
                self._reopen()
            # The whole line in one write; loop only on a short write, still under the lock.
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            if self.mirror_fd is not None:
                os.write(self.mirror_fd, data)
            if self.fsync:
                os.fsync(self.fd)  # before unlocking
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
        os.close(self.lock_fd)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wal", required=True, metavar="PATH", help="WAL to append to")
    p.add_argument("--writer-id", required=True, metavar="ID", help="prefix of tx_ids")
    p.add_argument("--count", required=True, type=int, metavar="N",
                   help="transactions to write (2 lines each: PREPARE, COMMIT)")
    p.add_argument("--fsync", action="store_true", help="fsync after every line")
    p.add_argument("--mirror", metavar="PATH",
                   help="also append every line here, under the same lock (audit copy)")
    p.add_argument("--rate", type=float, metavar="LINES_PER_SEC",
                   help="pace the lines (default: as fast as possible)")
    args = p.parse_args()

    writer = ProtocolWriter(args.wal, fsync=args.fsync, mirror=args.mirror)
    start = time.monotonic()
    lines = 0
    try:
        for n in range(args.count):
            for op in ("PREPARE", "COMMIT"):
                if args.rate:
                    delay = start + lines / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                writer.append({
                    "op": op,
                    "tx_id": f"{args.writer_id}-{n}",
                    "data": {"writer": args.writer_id, "seq": n},
                    "timestamp": time.time(),
                })
                lines += 1
    finally:
        writer.close()
    print(f"protocol_writer: {args.writer_id} wrote {lines} lines to {args.wal}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
