"""Settings: flags with ``PODLB_*`` environment defaults, validated once.

This is the only module that reads ``os.environ``. Each flag's environment variable is its
long name upper-cased with ``PODLB_`` in front (``--proc-root`` -> ``PODLB_PROC_ROOT``); a
repeatable flag takes a comma-separated list from the environment.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ENV_PREFIX = "PODLB_"


class SettingError(ValueError):
    """An invalid setting: names the setting, the value and where it came from."""

    def __init__(self, flag: str, value: object, source: str, problem: str) -> None:
        super().__init__(f"invalid {flag}={value!r} (from {source}): {problem}")
        self.flag = flag


class MissingSetting(SettingError):
    """A required setting given nowhere: names it and says where it can come from."""

    def __init__(self, flag: str, hint: str) -> None:
        ValueError.__init__(self, f"{flag} is required: {hint}")
        self.flag = flag


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class EnvDefaults:
    """Fills argparse defaults from the environment and remembers where each value came from."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.from_env: set[str] = set()
        self.builtin: dict[str, Any] = {}  # flag -> its default without the environment

    def add(
        self,
        parser: argparse.ArgumentParser,
        flag: str,
        *,
        default: Any = None,
        repeatable: bool = False,
        help: str,
        **kwargs: Any,
    ) -> None:
        name = env_name(flag)
        dest = flag.lstrip("-").replace("-", "_")
        self.builtin[flag] = default
        value: Any = default
        if name in self.environ:
            raw = self.environ[name]
            value = [v for v in raw.split(",") if v] if repeatable else raw
            self.from_env.add(dest)
        if repeatable:
            kwargs.setdefault("action", "append")
            # argparse appends to the default list: start from None and fill in later.
            parser.set_defaults(**{f"_default_{dest}": value})
            value = None
        shown = ",".join(default) if isinstance(default, list) else default
        if shown not in (None, ""):
            help = f"{help} (default: {shown})"
        parser.add_argument(flag, default=value, help=f"{help} [env {name}]", **kwargs)

    def source(self, dest: str) -> str:
        return (
            f"environment {env_name(dest)}"
            if dest in self.from_env
            else f"flag --{dest.replace('_', '-')}"
        )


def finish_repeatables(args: argparse.Namespace) -> None:
    """Replace ``None`` of repeatable flags given nowhere by their (env or built-in) default."""
    for key, value in list(vars(args).items()):
        if key.startswith("_default_"):
            dest = key[len("_default_") :]
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)
            delattr(args, key)


# -- podlb-agent run ---------------------------------------------------------------------

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LOG_LEVELS = ("debug", "info", "warning", "error")
PROVIDER_CHOICES = ("none", "haproxy", "tencent-clb", "baidu-blb")


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Everything ``podlb-agent run`` needs, validated. Units are in the field names."""

    role: str  # "all" (node work + leader candidate), "node" or "leader" (ROLES)
    node_name: str  # the node this agent serves (downward API spec.nodeName); "" for "leader"
    namespace: str  # the agent's own namespace, where the Lease lives
    identity: str  # this agent's name in the Lease (pod name, else hostname)
    kubeconfig: str | None  # a kubeconfig file; None: in-cluster service account
    kube_server: str | None  # explicit API server URL (with kube_token_file)
    kube_token_file: str | None
    kube_timeout_s: float  # connect and read timeout of every API request (not watch streams)
    watch_idle_s: float  # a watch that sends nothing this long (no bookmark either) is reopened
    listen_host: str
    listen_port: int
    log_format: str  # text | json
    log_level: str
    scan_interval_s: float  # full namespace scan period (also runs soon after pod changes)
    resync_s: float  # periodic full re-decision and condition re-check
    proc_root: str
    netns_dirs: tuple[str, ...]
    lease_name: str
    lease_duration_s: float
    renew_deadline_s: float
    retry_period_s: float
    status_rate_per_s: float  # condition writes per second (token bucket shared by the writers)
    lb: tuple[str, ...]  # LB providers (empty: none); the first is the default provider
    haproxy_runtime: tuple[str, ...]  # unix:/path or tcp:HOST:PORT, one per HAProxy instance
    haproxy_server_options: str  # options of every dynamically added server
    tencent_region: str  # the CLBs' region (ap-guangzhou ...)
    tencent_endpoint: str | None  # CLB API URL; None: the public clb.tencentcloudapi.com
    baidu_endpoint: str  # app BLB API endpoint (blb.bj.baidubce.com ...)
    baidu_max_backends: int  # members per BLB IP group podlb registers at most (0: no limit)
    lb_drain_timeout_s: float  # a draining server is removed after this even with sessions
    leader_resync_s: float  # full leader reconcile period when nothing is in flight
    drain_port: int  # in-pod drain listener port (0: none)
    drain_quiet_s: float  # a connection idle this long does not hold a drain
    drain_max_concurrent: int  # drains served at once on this node
    shutdown_timeout_s: float  # workers must stop within this on SIGTERM
    shutdown_drain_wait_s: float  # on SIGTERM, drains in progress may end first, this long at most
    # Cloud credentials, from the environment only (a Secret), never logged.
    credentials: Credentials = field(default_factory=lambda: Credentials({}))

    def describe(self) -> dict[str, object]:
        out = asdict(self)
        out["credentials"] = sorted(self.credentials.values)  # their names, not their values
        return out


# Environment variables of the cloud providers' credentials: no flags (flags show in ps).
CREDENTIAL_ENV = {
    "tencent-clb": ("PODLB_TENCENT_SECRET_ID", "PODLB_TENCENT_SECRET_KEY"),
    "baidu-blb": ("PODLB_BAIDU_ACCESS_KEY_ID", "PODLB_BAIDU_SECRET_ACCESS_KEY"),
}


@dataclass(frozen=True, slots=True)
class Credentials:
    values: Mapping[str, str] = field(repr=False)  # env name -> value

    def __getitem__(self, name: str) -> str:
        return self.values[name]


def add_path_flags(parser: argparse.ArgumentParser, env: EnvDefaults) -> None:
    """Where the inspector looks (shared by ``inspect`` and ``run``)."""
    env.add(parser, "--proc-root", default="/proc", help="where the host's /proc is mounted")
    env.add(
        parser,
        "--netns-dir",
        default=["/var/run/netns", "/run/netns"],
        repeatable=True,
        metavar="DIR",
        help="directory of netns bind mounts (repeatable)",
    )


def add_drain_port_flag(parser: argparse.ArgumentParser, env: EnvDefaults) -> None:
    """The in-pod drain listener's port (``run`` serves it, ``inspect`` labels it)."""
    env.add(
        parser,
        "--drain-port",
        default="9809",
        help="port of podlb's drain listener inside each opted-in pod (0: no listener)",
    )


ROLES = ("all", "node", "leader")


def add_run_flags(parser: argparse.ArgumentParser, env: EnvDefaults) -> None:
    env.add(
        parser,
        "--role",
        default="all",
        choices=ROLES,
        help="all: this node's work and a candidate for leader (the DaemonSet default); node: "
        "this node's work only (no Lease, no LB, no lb-ready); leader: a candidate for leader "
        "only (no node, no host access)",
    )
    env.add(parser, "--node-name", help="node this agent serves (required unless --role leader)")
    env.add(parser, "--namespace", default="podlb-system", help="the agent's namespace (Lease)")
    env.add(parser, "--identity", help="name in the Lease (default: pod name, else hostname)")
    env.add(parser, "--pod-name", help="this agent's pod name (downward API)")
    env.add(parser, "--kubeconfig", help="kubeconfig file (default: in-cluster config)")
    env.add(parser, "--kube-server", help="API server URL (tests; with --kube-token-file)")
    env.add(parser, "--kube-token-file", help="bearer token file for --kube-server")
    env.add(
        parser,
        "--kube-timeout",
        default="10",
        help="connect and read timeout of every API request, seconds",
    )
    env.add(
        parser,
        "--watch-idle-timeout",
        default="90",
        help="seconds a watch may send nothing, not even a bookmark, before it is reopened",
    )
    env.add(parser, "--listen", default="0.0.0.0:9808", help="node HTTP API HOST:PORT")
    env.add(parser, "--log-format", default="text", choices=("text", "json"), help="log format")
    env.add(parser, "--log-level", default="info", choices=LOG_LEVELS, help="log level")
    env.add(
        parser,
        "--scan-interval",
        default="10",
        help="seconds between full namespace scans (pod changes also trigger one)",
    )
    env.add(parser, "--resync", default="300", help="seconds between full resyncs")
    add_path_flags(parser, env)
    env.add(parser, "--lease-name", default="podlb-leader", help="leader election Lease name")
    env.add(parser, "--lease-duration", default="15", help="leader Lease duration, seconds")
    env.add(parser, "--renew-deadline", default="10", help="leader renew deadline, seconds")
    env.add(parser, "--retry-period", default="2", help="leader retry period, seconds")
    env.add(
        parser,
        "--status-rate",
        default="100",
        help="pod status writes per second of each agent's condition writers (a token bucket, "
        "burst twice this, shared by one writer per 10 writes/s, 2 to 8); 100 keeps up with "
        "the pod churn a default control plane can make (README, Settings)",
    )
    env.add(
        parser,
        "--lb",
        default=["none"],
        repeatable=True,
        choices=PROVIDER_CHOICES,
        help="LB provider (repeatable; the first is the default of direct Services)",
    )
    env.add(
        parser,
        "--haproxy-runtime",
        default=[],
        repeatable=True,
        metavar="ENDPOINT",
        help="HAProxy Runtime API: unix:/path or tcp:HOST:PORT (repeatable: every instance)",
    )
    env.add(
        parser,
        "--haproxy-server-options",
        default="check inter 1s fastinter 100ms downinter 200ms fall 2 rise 2",
        help="options of each server podlb adds to HAProxy",
    )
    env.add(parser, "--tencent-region", help="Tencent CLB region, e.g. ap-guangzhou")
    env.add(
        parser,
        "--tencent-endpoint",
        help="Tencent CLB API URL (default: the public clb.tencentcloudapi.com)",
    )
    env.add(parser, "--baidu-endpoint", help="Baidu app BLB API endpoint, e.g. blb.bj.baidubce.com")
    env.add(
        parser,
        "--baidu-max-backends",
        default="50",
        help="BLB IP group members podlb registers at most, the BLB's quota (0: no limit)",
    )
    env.add(parser, "--lb-drain-timeout", default="60", help="seconds before a draining server "
            "is removed even with sessions left")  # fmt: skip
    env.add(parser, "--leader-resync", default="10", help="seconds between full LB reconciles")
    add_drain_port_flag(parser, env)
    env.add(
        parser,
        "--drain-quiet",
        default="1",
        help="seconds without request bytes after which a connection no longer holds a drain",
    )
    env.add(parser, "--drain-max-concurrent", default="256", help="drains served at once")
    env.add(parser, "--shutdown-timeout", default="10", help="seconds to stop on SIGTERM")
    env.add(
        parser,
        "--shutdown-drain-wait",
        default="60",
        help="on SIGTERM, seconds the drains in progress get to end before the agent stops "
        "(keep terminationGracePeriodSeconds above this plus --shutdown-timeout)",
    )


def listen_address(raw: str | None, source: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too; an empty host is ``0.0.0.0``)."""
    host, sep, port_s = (raw or "").rpartition(":")
    if not sep:
        raise SettingError("--listen", raw, source, "expected HOST:PORT")
    if not port_s.isdigit():
        raise SettingError("--listen", raw, source, f"port {port_s!r} is not a number")
    if int(port_s) > 65535:
        raise SettingError("--listen", raw, source, f"port {port_s} out of range (0-65535)")
    return host.strip("[]") or "0.0.0.0", int(port_s)


def in_cluster(env: EnvDefaults) -> bool:
    """Whether the in-cluster config can work: kubelet sets these in every pod."""
    return bool(
        env.environ.get("KUBERNETES_SERVICE_HOST") and env.environ.get("KUBERNETES_SERVICE_PORT")
    )


def check_proc_root(args: argparse.Namespace, env: EnvDefaults) -> None:
    """A directory holding at least one ``<pid>`` directory: an empty one (a hostPath volume
    that was not mounted) would leave discovery nothing to read (psutil fails on it)."""
    root = args.proc_root
    if not os.path.isdir(root):
        raise SettingError("--proc-root", root, env.source("proc_root"), "no such directory")
    try:
        with os.scandir(root) as entries:
            has_pids = any(e.name.isdigit() and e.is_dir() for e in entries)
    except OSError as exc:
        raise SettingError(
            "--proc-root", root, env.source("proc_root"), f"cannot list it: {exc.strerror}"
        ) from None
    if not has_pids:
        raise SettingError(
            "--proc-root",
            root,
            env.source("proc_root"),
            "no process directories (<pid>/) in it: pass the host's /proc (the default) or "
            "where it is mounted, e.g. a hostPath volume of /proc",
        )


def drain_port(args: argparse.Namespace, env: EnvDefaults) -> int:
    return int(_number(args, env, "drain_port", 0, 65535))


def _number(args: argparse.Namespace, env: EnvDefaults, dest: str, lo: float, hi: float) -> float:
    raw = getattr(args, dest)
    flag = "--" + dest.replace("_", "-")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SettingError(flag, raw, env.source(dest), "not a number") from None
    if not lo <= value <= hi:
        raise SettingError(flag, raw, env.source(dest), f"must be between {lo:g} and {hi:g}")
    return value


def run_settings(args: argparse.Namespace, env: EnvDefaults) -> RunSettings:
    """Validate ``run``'s flags; raise :class:`SettingError` naming the first bad one."""
    role = args.role
    if role not in ROLES:
        raise SettingError(
            "--role", role, env.source("role"), f"expected one of {', '.join(ROLES)}"
        )
    node = (args.node_name or "").strip()
    if not node and role != "leader":
        raise MissingSetting(
            "--node-name",
            f"pass --node-name NODE or set {env_name('node_name')} (the DaemonSet sets it from "
            "the pod's spec.nodeName)",
        )
    if node and not _DNS1123.match(node):
        raise SettingError("--node-name", node, env.source("node_name"), "not a DNS-1123 name")
    namespace = args.namespace
    if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace or ""):
        raise SettingError(
            "--namespace", namespace, env.source("namespace"), "not a namespace name"
        )
    host, port = listen_address(args.listen, env.source("listen"))
    if args.kube_server and not re.match(r"^https?://", args.kube_server):
        raise SettingError(
            "--kube-server", args.kube_server, env.source("kube_server"), "expected http(s)://..."
        )
    for dest in ("kubeconfig", "kube_token_file"):
        path = getattr(args, dest)
        if path and not os.path.isfile(path):
            raise SettingError(
                "--" + dest.replace("_", "-"), path, env.source(dest), "no such file"
            )
    check_proc_root(args, env)
    lease = _number(args, env, "lease_duration", 1, 3600)
    renew = _number(args, env, "renew_deadline", 0.1, 3600)
    retry = _number(args, env, "retry_period", 0.05, 3600)
    if not retry < renew < lease:
        raise SettingError(
            "--renew-deadline",
            args.renew_deadline,
            env.source("renew_deadline"),
            "need retry-period < renew-deadline < lease-duration",
        )
    endpoints = tuple(args.haproxy_runtime or ())
    for ep in endpoints:
        if not re.match(r"^(unix:/.+|tcp:[^:]+:\d+)$", ep):
            raise SettingError(
                "--haproxy-runtime", ep, env.source("haproxy_runtime"),
                "expected unix:/path or tcp:HOST:PORT",
            )  # fmt: skip
    lbs = tuple(dict.fromkeys(p.strip() for p in args.lb if p.strip() != "none"))
    if lbs and role == "node":
        raise SettingError(
            "--lb", ",".join(lbs), env.source("lb"),
            "--role node never calls an LB: leave --lb unset (the leader's settings hold it)",
        )  # fmt: skip
    for name in lbs:
        if name not in PROVIDER_CHOICES:
            raise SettingError(
                "--lb", name, env.source("lb"), f"expected one of {', '.join(PROVIDER_CHOICES)}"
            )
    if "haproxy" in lbs and not endpoints:
        raise SettingError(
            "--haproxy-runtime",
            "",
            env.source("haproxy_runtime"),
            "--lb haproxy needs at least one",
        )
    if "tencent-clb" in lbs and not (args.tencent_region or "").strip():
        raise SettingError(
            "--tencent-region", "", env.source("tencent_region"), "--lb tencent-clb needs it"
        )
    if args.tencent_endpoint and not re.match(r"^https?://[^/\s]+/?$", args.tencent_endpoint):
        raise SettingError(
            "--tencent-endpoint", args.tencent_endpoint, env.source("tencent_endpoint"),
            "expected http(s)://HOST[:PORT]",
        )  # fmt: skip
    if "baidu-blb" in lbs and not (args.baidu_endpoint or "").strip():
        raise SettingError(
            "--baidu-endpoint", "", env.source("baidu_endpoint"), "--lb baidu-blb needs it"
        )
    if args.baidu_endpoint and not re.match(
        r"^(https?://)?[^/\s:]+(:\d+)?/?$", args.baidu_endpoint
    ):
        raise SettingError(
            "--baidu-endpoint", args.baidu_endpoint, env.source("baidu_endpoint"),
            "expected HOST[:PORT] or http(s)://HOST[:PORT]",
        )  # fmt: skip
    secrets: dict[str, str] = {}
    for name in lbs:
        for var in CREDENTIAL_ENV.get(name, ()):
            value = env.environ.get(var, "").strip()
            if not value:
                raise SettingError(
                    "--lb", name, env.source("lb"), f"needs the environment variable {var}"
                )
            secrets[var] = value
    settings = RunSettings(
        role=role,
        node_name=node,
        namespace=namespace,
        identity=args.identity or args.pod_name or socket.gethostname(),
        kubeconfig=args.kubeconfig,
        kube_server=args.kube_server,
        kube_token_file=args.kube_token_file,
        kube_timeout_s=_number(args, env, "kube_timeout", 0.1, 300),
        watch_idle_s=_number(args, env, "watch_idle_timeout", 1, 3600),
        listen_host=host,
        listen_port=port,
        log_format=args.log_format,
        log_level=args.log_level,
        scan_interval_s=_number(args, env, "scan_interval", 0.1, 3600),
        resync_s=_number(args, env, "resync", 1, 86400),
        proc_root=args.proc_root,
        netns_dirs=tuple(args.netns_dir),
        lease_name=args.lease_name,
        lease_duration_s=lease,
        renew_deadline_s=renew,
        retry_period_s=retry,
        status_rate_per_s=_number(args, env, "status_rate", 0.1, 10000),
        lb=lbs,
        haproxy_runtime=endpoints,
        haproxy_server_options=args.haproxy_server_options,
        tencent_region=(args.tencent_region or "").strip(),
        tencent_endpoint=args.tencent_endpoint or None,
        baidu_endpoint=(args.baidu_endpoint or "").strip(),
        baidu_max_backends=int(_number(args, env, "baidu_max_backends", 0, 100_000)),
        credentials=Credentials(secrets),
        lb_drain_timeout_s=_number(args, env, "lb_drain_timeout", 0, 86400),
        leader_resync_s=_number(args, env, "leader_resync", 0.5, 3600),
        drain_port=drain_port(args, env),
        drain_quiet_s=_number(args, env, "drain_quiet", 0, 600),
        drain_max_concurrent=int(_number(args, env, "drain_max_concurrent", 1, 100000)),
        shutdown_timeout_s=_number(args, env, "shutdown_timeout", 0.5, 600),
        shutdown_drain_wait_s=_number(args, env, "shutdown_drain_wait", 0, 3600),
    )
    if not (args.kubeconfig or args.kube_server or in_cluster(env)):
        raise MissingSetting(
            "--kubeconfig",
            "outside a pod there is no in-cluster config (KUBERNETES_SERVICE_HOST is not "
            f"set): pass --kubeconfig FILE (e.g. ~/.kube/config) or set {env_name('kubeconfig')}, "
            "or run the agent in a pod",
        )
    return settings
