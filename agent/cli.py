"""``podlb-agent``: argument parsing and exit codes; no business rules here.

Exit codes: 0 success, 1 runtime failure, 2 usage error or missing privilege.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Sequence

from agent import __version__, caps
from agent.settings import (
    EnvDefaults,
    SettingError,
    add_drain_port_flag,
    add_path_flags,
    add_run_flags,
    check_proc_root,
    drain_port,
    finish_repeatables,
    run_settings,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
COMMANDS = ("run", "inspect", "drain", "drains", "version")

DESCRIPTION = """\
podlb node agent: direct-to-pod load balancing on Kubernetes.
Every flag also reads a PODLB_* environment variable (shown in each --help)."""


def _build_info() -> dict[str, str]:
    try:
        from agent import _build  # type: ignore[attr-defined]  # written by the image build

        commit = str(getattr(_build, "COMMIT", "unknown"))
    except ImportError:
        commit = "unknown"
    return {"version": __version__, "commit": commit, "python": platform.python_version()}


def build_parser(env: EnvDefaults) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podlb-agent", description=DESCRIPTION)
    # Not required= here: argparse would then report a missing COMMAND before an unknown flag.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    version = sub.add_parser("version", help="print the version and build commit")
    version.add_argument("--json", action="store_true", help="print JSON")

    inspect = sub.add_parser(
        "inspect",
        help="show every pod network namespace on this host",
        description="Show every pod network namespace on this host: interfaces, addresses, "
        "counters and TCP sockets. Needs root (CAP_SYS_ADMIN; CAP_SYS_PTRACE to see processes "
        "of other users).",
    )
    inspect.add_argument("--json", action="store_true", help="print the JSON document (README)")
    add_path_flags(inspect, env)
    inspect.add_argument(
        "--include-host", action="store_true", help="also show the host's own namespace"
    )
    env.add(
        inspect,
        "--netlink-decoder",
        default="fast",
        choices=("fast", "pyroute2"),
        help="netlink decoder: fast or pyroute2 (reference, slower)",
    )
    add_drain_port_flag(inspect, env)
    drain = sub.add_parser(
        "drain",
        help="hold until a terminating pod is drained (for exec preStop hooks)",
        description="Ask the node agent to drain a terminating pod and wait until it is done: "
        "the LB has deregistered the pod and it has gone quiet, or the drain timeout ended. "
        "While the agent cannot be reached or answers 429/503 (it restarts), asks again every "
        "second until --timeout. Exit 0 drained, 4 timeout, 1 refused or failed.",
    )
    drain.add_argument(
        "pod", metavar="NAMESPACE/NAME", help="the pod (e.g. $POD_NAMESPACE/$POD_NAME)"
    )
    env.add(drain, "--agent-url", default="http://127.0.0.1:9808", help="the node agent's API")
    env.add(drain, "--timeout", default="600", help="give up waiting after this many seconds")
    drains = sub.add_parser(
        "drains",
        help="show the node agent's last drains (GET /v1/drains)",
        description="Show the last drains the node agent held, oldest first: how each ended "
        "(deregistered+quiet, timeout, agent-shutdown, refused), the time from the deletion to "
        "the hook's answer and to the LB's Deregistered, the connections on serving ports then "
        "and at the end, and the connections and bytes received after the LB's Deregistered.",
    )
    drains.add_argument("--json", action="store_true", help="print the JSON records (README)")
    env.add(drains, "--agent-url", default="http://127.0.0.1:9808", help="the node agent's API")

    run = sub.add_parser(
        "run",
        help="run the node agent (DaemonSet)",
        description="Run the node agent: watch this node's pods, inspect their namespaces, "
        "report podlb.io/datapath-ready, serve the node API and take part in leader election.",
    )
    add_run_flags(run, env)
    return parser


def cmd_run(args: argparse.Namespace, env: EnvDefaults) -> int:
    settings = run_settings(args, env)
    # The leader role enters no namespace: it runs without any capability.
    lacking = caps.missing(caps.INSPECT_CAPS) if settings.role != "leader" else {}
    if lacking:
        print(f"podlb-agent run: missing capabilities: {caps.describe(lacking)}", file=sys.stderr)
        return EXIT_USAGE
    from agent import logs, runtime
    from agent.errors import PermanentError

    logs.setup(settings.log_format, settings.log_level)
    optional = caps.missing(caps.OPTIONAL_CAPS) if settings.role != "leader" else {}
    if optional:
        logging.getLogger("agent").info("running without %s", caps.describe(optional))
    try:
        return runtime.run(settings)
    except PermanentError as exc:
        logging.getLogger("agent").error("cannot start: %s", exc)
        return EXIT_FAILURE


EXIT_DRAIN_TIMEOUT = 4
DRAIN_RETRY_S = 1.0  # podlb-agent drain asks again this long after the agent did not answer


def cmd_drain(args: argparse.Namespace, env: EnvDefaults) -> int:
    import http.client
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    namespace, sep, name = args.pod.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise SettingError("NAMESPACE/NAME", args.pod, "argument", "expected NAMESPACE/NAME")
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise SettingError(
            "--timeout", args.timeout, env.source("timeout"), "not a number"
        ) from None
    quote = urllib.parse.quote
    url = (
        f"{args.agent_url.rstrip('/')}/v1/drain/{quote(namespace, safe='')}/{quote(name, safe='')}"
    )
    # The agent may restart under a held drain (a crash; a stop that outlived its wait): ask
    # again until the deadline. The restarted agent resumes the drain (its timeout counts from
    # when it first saw the pod terminating), so the hook still ends with the drain.
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=max(left, 1.0)) as resp:
                body = json.loads(resp.read() or b"{}")
            break
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            if exc.code not in (429, 503) or left <= DRAIN_RETRY_S:
                print(f"podlb-agent drain: {exc.code}: {detail}", file=sys.stderr)
                return EXIT_FAILURE
            print(f"podlb-agent drain: {exc.code}: {detail}; asking again", file=sys.stderr)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if left <= DRAIN_RETRY_S:
                print(f"podlb-agent drain: cannot reach the agent at {args.agent_url}: {exc}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_FAILURE
            print(f"podlb-agent drain: agent at {args.agent_url}: {exc}; asking again",
                  file=sys.stderr)  # fmt: skip
        time.sleep(DRAIN_RETRY_S)
    outcome, seconds = body.get("outcome"), body.get("seconds")
    print(f"{body.get('pod')}: {outcome} after {seconds}s: {body.get('message')}")
    return EXIT_DRAIN_TIMEOUT if body.get("outcome") == "timeout" else EXIT_OK


def cmd_drains(args: argparse.Namespace) -> int:
    import http.client
    import urllib.error
    import urllib.request

    from agent.report import drains_table

    url = f"{args.agent_url.rstrip('/')}/v1/drains"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            records = json.loads(resp.read())["drains"]
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        print(f"podlb-agent drains: cannot read {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(drains_table(records))
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    info = _build_info()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"podlb-agent {info['version']} (commit {info['commit']}, python {info['python']})")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, env: EnvDefaults) -> int:
    from agent.datapath import Inspector, InspectorConfig
    from agent.report import snapshot_json, snapshot_table

    lacking = caps.missing(caps.INSPECT_CAPS)
    if lacking:
        print(
            f"podlb-agent inspect: missing capabilities: {caps.describe(lacking)}. "
            "Run as root (or grant these capabilities).",
            file=sys.stderr,
        )
        return EXIT_USAGE
    check_proc_root(args, env)
    port = drain_port(args, env)
    config = InspectorConfig(
        proc_root=args.proc_root,
        netns_dirs=tuple(args.netns_dir),
        include_host=args.include_host,
        decoder=args.netlink_decoder,
    )
    snap = Inspector(config).scan()
    if args.json:
        json.dump(snapshot_json(snap), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(snapshot_table(snap, drain_port=port))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    env = EnvDefaults()
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"a COMMAND is required: one of {', '.join(COMMANDS)}")
    finish_repeatables(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "version":
            return cmd_version(args)
        if args.command == "inspect":
            return cmd_inspect(args, env)
        if args.command == "run":
            return cmd_run(args, env)
        if args.command == "drain":
            return cmd_drain(args, env)
        if args.command == "drains":
            return cmd_drains(args)
    except SettingError as exc:
        print(f"podlb-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
