"""agent.kube imports the kubernetes client lazily: none of its ~700 models unless asked for,
and every name of the real packages still there."""

from __future__ import annotations

import json
import subprocess
import sys

from agent.kube.lazy import exports, install

AGENT_KUBE = "import agent.kube.client, agent.kube.factory, agent.kube.lease, agent.kube.pods"


def run(code: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_agent_loads_no_model_and_three_apis() -> None:
    loaded = run(
        f"{AGENT_KUBE}\n"
        "import json, sys\n"
        "from agent.clock import Clock\n"
        "from agent.kube.calls import Calls\n"
        "from agent.kube.client import KubeAccess\n"
        "from agent.kube.factory import KubeAdapters\n"
        "kube = KubeAdapters(KubeAccess(host='http://127.0.0.1:9'), Calls(), Clock())\n"
        "kube.status_sink('podlb-agent', 'node-1'), kube.lease_store('podlb-system', 'x')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kubernetes.client.'))))"
    )
    assert isinstance(loaded, list)
    assert not [m for m in loaded if m.startswith("kubernetes.client.models.")]
    assert [m for m in loaded if m.startswith("kubernetes.client.api.")] == [
        "kubernetes.client.api.coordination_v1_api",
        "kubernetes.client.api.core_v1_api",
        "kubernetes.client.api.discovery_v1_api",
    ]


def test_every_name_of_the_real_packages_resolves() -> None:
    """What ``from kubernetes import client; client.V1Pod`` or the client's deserializer
    (``getattr(kubernetes.client.models, "V1Lease")``) reads is there, as the same object."""
    result = run(
        f"{AGENT_KUBE}\n"
        "import json, importlib, sys, kubernetes\n"
        "from pathlib import Path\n"
        "from agent.kube.lazy import PACKAGES, exports\n"
        "bad, count = [], 0\n"
        "for name in PACKAGES:\n"
        "    mod = sys.modules[name]\n"
        "    for attr, (where, member) in exports(name, Path(mod.__file__).read_text()).items():\n"
        "        count += 1\n"
        "        real = importlib.import_module(where)\n"
        "        if getattr(mod, attr) is not (getattr(real, member) if member else real):\n"
        "            bad.append(f'{name}.{attr}')\n"
        "from kubernetes import client, watch\n"
        "ok = 'V1Pod' in dir(client) and client.__version__ == kubernetes.__version__\n"
        "print(json.dumps([count, bad, ok, hasattr(watch, 'Watch')]))"
    )
    assert isinstance(result, list)
    count, bad, ok, has_watch = result
    assert count > 800 and bad == [] and ok and has_watch


def test_exports_reads_the_three_forms_of_an_init() -> None:
    source = (
        "from __future__ import absolute_import\n"
        '__version__ = "1.0"\n'
        "from . import client\n"
        "from kubernetes.client.api_client import ApiClient\n"
        "from kubernetes.client.models.v1_pod import V1Pod  \n"
    )
    assert exports("kubernetes", source) == {
        "client": ("kubernetes.client", None),
        "ApiClient": ("kubernetes.client.api_client", "ApiClient"),
        "V1Pod": ("kubernetes.client.models.v1_pod", "V1Pod"),
    }


def test_install_is_a_no_op_once_kubernetes_is_imported() -> None:
    import kubernetes  # noqa: F401 - imported (lazily or not) by this process already

    assert install() is False
