"""``make demo``: podlb on real network namespaces of this machine, end to end.

1. ``podlb-agent inspect`` over a few pod-like namespaces: veth, macvlan, a tap moved in as
   ``eth0`` (stands in for an ENI), one with a server and a connected client.
2. ``podlb-agent run`` against the Kubernetes API double and the simulated kubelet: three pods
   get ``podlb.io/datapath-ready``; one app stops listening and the condition follows.
3. The rolling update podlb exists for, under load through a real HAProxy: with podlb's gate
   and drain hook, with no hook, and with ``preStop: sleep`` (scaled from 40 s to 10 s so the
   demo takes about two minutes), and the comparison table.

Everything it creates is removed on exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

from agent.report import drains_table, format_table, tcp_column
from tests.testbed.netns import NetnsPool, socket_in_netns


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def inspect_demo() -> None:
    banner("1. podlb-agent inspect: pod namespaces on this host")
    with NetnsPool(prefix="demo") as pool:
        web, other = pool.add_many_veth(2)
        parent = pool.add_parent()
        pool.add_macvlan(parent, mode="bridge")
        pool.add_tap()
        srv = socket_in_netns(web.name, socket.AF_INET, socket.SOCK_STREAM)
        srv.bind((web.ip, 8080))
        srv.listen()
        client = socket.create_connection((web.ip, 8080), timeout=2)
        conn, _ = srv.accept()
        client.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
        try:
            subprocess.run([sys.executable, "-m", "agent", "inspect"], check=True)
            print(f"\n(the veth pod {web.name} has a server on 8080 with 1 client connected;")
            print(" the tap pod shows as tun/tap, down: nothing reads the tap)")
        finally:
            for s in (client, conn, srv):
                s.close()
        del other


def agent_demo() -> None:
    from kubernetes import client

    from tests.testbed.agents import AgentProcess
    from tests.testbed.appproc import app_argv
    from tests.testbed.node import Kubelet, make_pod
    from tests.testbed.rbac import AGENT_TOKEN, agent_cluster

    banner("2. podlb-agent run: datapath readiness reported to Kubernetes")
    with agent_cluster("shop") as api:
        core = client.CoreV1Api(api.api_client())
        with Kubelet.for_api(api, ["node-a"]) as kubelet:
            agent = AgentProcess(api.url, AGENT_TOKEN, "node-a").start()
            try:
                for i in range(3):
                    core.create_namespaced_pod(
                        "shop",
                        make_pod(
                            f"web-{i}", "node-a", namespace="shop",
                            readiness_gates=["podlb.io/lb-ready"],
                        ),
                    )  # fmt: skip
                agent.wait_ready()
                show = lambda: show_conditions(core)  # noqa: E731
                wait(lambda: all_true(core), 20)
                show()
                print("\nweb-1's app stops listening ...")
                netns = kubelet.pod_netns("web-1", "shop")
                assert netns is not None
                for proc in list(netns.procs):
                    proc.kill()
                wait(lambda: not all_true(core), 20)
                show()
                print("\n... and listens again")
                netns.popen(app_argv(8080, "web-1"))
                wait(lambda: all_true(core), 20)
                show()
                print("\nthe agent's node API, GET /v1/pods (JSON, shown as a table):")
                print(pods_table(agent.get_json("/v1/pods")["pods"]))
                print(f"(TCP: listening ports with their connections; {DRAIN_PORT} podlb-drain is")
                print(" podlb's own drain listener in each opted-in pod, for its preStop hook)")
            finally:
                agent.stop()


def rollout_demo(sleep_s: int = 10) -> None:
    from bench.rolling_update import table
    from tests.testbed.rollout import run_scenario

    banner("3. a rolling update of 6 pods under load through HAProxy (LB API latency 1 s)")
    results = []
    for mode in ("podlb", "nohook", "sleep"):
        label = (
            f"preStop sleep {sleep_s} (the vendors' 40 s, scaled down)" if mode == "sleep" else mode
        )
        print(f"  running: {label} ...", flush=True)
        results.append(run_scenario(mode, replicas=6, sleep_s=sleep_s))
    print()
    print(table(results, sleep_s))
    podlb = results[0]
    held = podlb.drain_p(0.5) or 0.0
    print(f"\npodlb: {podlb.failed} failed requests; each old pod held {held:.1f} s (median)")
    print(f"instead of {sleep_s} s; without hook and gate {results[1].failed} requests failed.")
    ended, total = podlb.signal_ended()
    print(f"\npodlb's drain records (GET /v1/drains; podlb-agent drains): {ended} of {total} "
          "ended by deregistered+quiet")  # fmt: skip
    print("\n".join("  " + line for line in drains_table(podlb.drains).splitlines()))
    print("  (HELD: deletion to the hook's answer; DEREGISTERED: to the LB's confirmation;")
    print("   CONNS: on serving ports then and at the end; NEW, BYTES: after the confirmation)")


DRAIN_PORT = 9809  # the agent's default --drain-port


def pods_table(pods: list[dict[str, Any]]) -> str:
    """``/v1/pods`` as a table: one row per pod."""
    rows = []
    for p in pods:
        iface, tcp, dp = p["interface"] or {}, p["tcp"] or {}, p["datapath"]
        established = {int(port): n for port, n in tcp.get("established", {}).items()}
        rows.append(
            (
                f"{p['namespace']}/{p['name']}",
                ",".join(p["ips"]) or "-",
                " ".join(str(iface[k]) for k in ("name", "kind", "state") if iface.get(k)) or "-",
                "-" if dp["ready"] is None else f"{dp['ready']} {dp['reason']}",
                tcp_column([s["port"] for s in tcp.get("listening", [])], established, DRAIN_PORT),
            )
        )
    header = ("POD", "IP", "INTERFACE", "DATAPATH-READY", "TCP")
    return "\n".join("  " + line for line in format_table(header, rows).splitlines())


def conditions(core: object) -> dict[str, tuple[str, str]]:
    out = {}
    for pod in core.list_namespaced_pod("shop").items:  # type: ignore[attr-defined]
        for c in pod.status.conditions or []:
            if c.type == "podlb.io/datapath-ready":
                out[pod.metadata.name] = (c.status, c.reason)
    return out


def all_true(core: object) -> bool:
    conds = conditions(core)
    return len(conds) == 3 and all(s == "True" for s, _ in conds.values())


def show_conditions(core: object) -> None:
    for name, (status, reason) in sorted(conditions(core).items()):
        print(f"  shop/{name:8} podlb.io/datapath-ready={status:5} reason={reason}")


def wait(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise SystemExit("demo: timed out")


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root: it creates network namespaces", file=sys.stderr)
        return 2
    inspect_demo()
    agent_demo()
    rollout_demo()
    banner("done: every namespace, process and server the demo made is gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
