"""``python -m tests.testbed.kubeapi --listen 127.0.0.1:PORT [--token NAME]...
[--token-rules NAME=JSON]...``"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .auth import Rule
from .server import KubeAPIServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.testbed.kubeapi")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        help="add a bearer token NAME with full rights (repeatable)",
    )
    p.add_argument(
        "--token-rules",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="add a bearer token NAME limited to the rules in JSON, a list of objects with "
        "verbs, resources, and optionally namespaces and api_groups (repeatable)",
    )
    p.add_argument("--watch-window", type=int, default=1000)
    p.add_argument("--bookmark-interval", type=float, default=1.0)
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    api = KubeAPIServer(
        host=host or "127.0.0.1",
        port=int(port),
        watch_window=args.watch_window,
        bookmark_interval=args.bookmark_interval,
    )
    for name in args.token:
        api.add_token(name, [Rule({"*"}, {"*"})])
    for spec in args.token_rules:
        name, _, rules = spec.partition("=")
        try:
            api.add_token(name, [Rule(**r) for r in json.loads(rules)])
        except (ValueError, TypeError) as e:
            p.error(f"--token-rules {name}: {e}")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with api:
        print(
            json.dumps(
                {
                    "url": api.url,
                    "admin_token": api.admin_token,
                    "tokens": [*args.token, *(t.partition("=")[0] for t in args.token_rules)],
                }
            ),
            flush=True,
        )
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
