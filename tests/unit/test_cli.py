"""What ``podlb-agent`` says when it is used wrongly (agent/cli.py, agent/settings.py): each
message names the problem and the way out, and ``--help`` shows every default."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from agent.cli import build_parser, main
from agent.settings import EnvDefaults, finish_repeatables, run_settings


def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    for var in ("PODLB_NODE_NAME", "PODLB_KUBECONFIG", "PODLB_KUBE_SERVER", "PODLB_LISTEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "podlb-agent: --node-name is required: pass --node-name NODE or set "
                  "PODLB_NODE_NAME (the DaemonSet sets it from the pod's spec.nodeName)"),
        (["run", "--node-name", "n1"],
         "podlb-agent: --kubeconfig is required: outside a pod there is no in-cluster config "
         "(KUBERNETES_SERVICE_HOST is not set): pass --kubeconfig FILE (e.g. ~/.kube/config) or "
         "set PODLB_KUBECONFIG, or run the agent in a pod"),
        (["run", "--node-name", "n1", "--kube-server", "http://x", "--listen", "1.2.3.4:99999"],
         "podlb-agent: invalid --listen='1.2.3.4:99999' (from flag --listen): port 99999 out of "
         "range (0-65535)"),
        (["run", "--node-name", "n1", "--kube-server", "http://x", "--listen", "1.2.3.4:http"],
         "port 'http' is not a number"),
        (["run", "--node-name", "n1", "--kube-server", "http://x", "--listen", "9808"],
         "expected HOST:PORT"),
        (["--bogus"], "podlb-agent: error: unrecognized arguments: --bogus"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "podlb-agent: error: a COMMAND is required: one of run, inspect, drain, drains, "
             "version"),
    ],
)  # fmt: skip
def test_usage_errors_say_what_to_do(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, said = run_cli(argv, capsys, monkeypatch)
    assert code == 2
    assert message in said.replace("\n", " ")
    assert "starting" not in said and "node_name" not in said  # no settings dump first
    assert "None" not in said


def test_in_a_pod_the_in_cluster_config_needs_no_flag() -> None:
    env = EnvDefaults({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    ns = build_parser(env).parse_args(["run", "--node-name", "n1"])
    finish_repeatables(ns)
    assert run_settings(ns, env).kubeconfig is None


@pytest.mark.parametrize("command", ["run", "inspect", "drain", "drains"])
def test_help_shows_every_default_and_env_name(command: str) -> None:
    env = EnvDefaults({})
    parser = build_parser(env)
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices[command].format_help().split())
    for action in sub.choices[command]._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), "--help")
        if flag in ("--help", "--json", "--include-host"):
            continue
        default = env.builtin[flag]
        shown = ",".join(default) if isinstance(default, list) else default
        if shown not in (None, ""):
            assert f"(default: {shown})" in text, flag
        assert "PODLB_" + flag[2:].replace("-", "_").upper() in text, flag


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_a_proc_root_without_processes_is_refused_before_starting(
    command: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty directory (say, a hostPath volume that was not mounted) crashed the scanner
    with an IndexError from psutil; it is a usage error naming the flag and the way out."""
    monkeypatch.setattr("agent.caps.missing", lambda wanted: {})  # as if root
    empty = tmp_path / "proc"
    empty.mkdir()
    argv = [command, "--proc-root", str(empty)]
    if command == "run":
        argv += ["--node-name", "n1", "--kube-server", "http://127.0.0.1:1"]
    code, said = run_cli(argv, capsys, monkeypatch)
    assert code == 2
    said = said.replace("\n", " ")
    assert f"invalid --proc-root={str(empty)!r} (from flag --proc-root)" in said
    assert "no process directories" in said and "pass the host's /proc" in said
    assert "starting" not in said and "Traceback" not in said
