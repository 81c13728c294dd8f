"""A process for the fork-server tests: reports what it runs with, then exits or waits.

Run as `python -m tests.guardian.forked_probe [--report FILE] [--code N] [--sleep S]
[--imported MODULE]`.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import signal
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report")
    parser.add_argument("--code", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--imported", default="", help="report whether this module is loaded")
    args = parser.parse_args()
    print("probe says hello", flush=True)
    atexit.register(lambda: print("probe atexit ran", flush=True))
    if args.report:
        with open(args.report, "w") as out:
            json.dump(
                {
                    "argv": sys.argv,
                    "env": dict(os.environ),
                    "cwd": os.getcwd(),
                    "pid": os.getpid(),
                    "session": os.getsid(0),
                    "parent": os.getppid(),
                    "imported": args.imported in sys.modules,
                    "frozen_objects": gc.get_freeze_count(),
                    "root_log_level": logging.getLogger().level,
                },
                out,
            )
    if args.sleep:
        stopped = False

        def on_term(_signum: int, _frame: object) -> None:
            nonlocal stopped
            stopped = True

        signal.signal(signal.SIGTERM, on_term)
        print("probe waiting", flush=True)
        deadline = time.monotonic() + args.sleep
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        if stopped:
            print("probe stopped cleanly", flush=True)
            return 0
    return args.code


if __name__ == "__main__":
    raise SystemExit(main())
