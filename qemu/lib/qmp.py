#!/usr/bin/env python3
"""A small QMP client for the guest tests: one command, or waiting for a migration to end.

  qmp.py SOCKET run COMMAND [ARGUMENTS-JSON]   prints the command's return value as JSON
  qmp.py SOCKET migration [TIMEOUT]            waits until the migration is completed, failed
                                               or cancelled; prints its status and times
  qmp.py SOCKET migration-active [TIMEOUT]     waits until it has started copying RAM

Exits 1 on a QMP error or a timeout (default 300 s), 2 on bad usage.
"""
import json
import socket
import sys
import time

ENDED = ("completed", "failed", "cancelled")


class Qmp:
    """One QMP connection: capabilities negotiated, events skipped."""

    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.reader = self.sock.makefile("r")
        self.read()  # the greeting
        self.run("qmp_capabilities")

    def read(self):
        line = self.reader.readline()
        if not line:
            raise ConnectionError("QEMU closed the QMP socket")
        return json.loads(line)

    def run(self, command, arguments=None):
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall((json.dumps(request) + "\n").encode())
        while True:
            answer = self.read()
            if "event" in answer:
                continue
            if "error" in answer:
                raise RuntimeError(f"{command}: {answer['error'].get('desc', answer['error'])}")
            return answer.get("return")


def wait_migration(qmp, wanted, timeout):
    """Polls query-migrate until its status is one of `wanted` or has ended."""
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.run("query-migrate")
        status = info.get("status", "none")
        if status in wanted or status in ENDED:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"migration still {status} after {timeout} s")
        time.sleep(0.05)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, what = argv[1], argv[2]
    try:
        qmp = Qmp(path)
        if what == "run" and len(argv) >= 4:
            arguments = json.loads(argv[4]) if len(argv) > 4 else None
            print(json.dumps(qmp.run(argv[3], arguments)))
            return 0
        if what in ("migration", "migration-active"):
            timeout = float(argv[3]) if len(argv) > 3 else 300.0
            wanted = ENDED if what == "migration" else ("active",)
            info = wait_migration(qmp, wanted, timeout)
            ram = info.get("ram", {})
            print(
                f"status {info.get('status')} total-time-ms {info.get('total-time', '-')} "
                f"downtime-ms {info.get('downtime', '-')} ram-transferred {ram.get('transferred', '-')} "
                f"dirty-sync-count {ram.get('dirty-sync-count', '-')}"
            )
            return 0 if info.get("status") in wanted else 1
    except (OSError, RuntimeError, TimeoutError, ValueError, ConnectionError) as e:
        print(f"qmp: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
