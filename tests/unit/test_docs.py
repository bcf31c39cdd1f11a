"""The README's references are checked against the code so they cannot drift."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.cli import build_parser
from agent.events import KINDS, OTHER_EVENTS, Kind
from agent.leader.routing import Problem
from agent.metrics import Metrics, NodeCollector, PodCollector, PodView
from agent.model import Interface, LinkKind, NetnsInfo, Pod, TcpState
from agent.node.drain import Outcome
from agent.node.drainlog import DrainRecord
from agent.report import SKIP_REASONS
from agent.settings import EnvDefaults

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
LOSS_TEXT = "Warning if the pod was ready, else Normal"


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(EnvDefaults({}))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError(name)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        opt
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }


def test_every_run_flag_is_in_the_settings_table_and_nothing_else() -> None:
    section = README.split("### Settings", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"`(--[a-z0-9-]+)`", section))
    assert documented == flags(subparser("run"))


def settings_rows() -> list[tuple[list[str], str]]:
    """(flags, default cell) of each row of the README's settings table."""
    section = README.split("### Settings", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `--"):
            first, default = [c.strip() for c in line.strip("|").split("|")][:2]
            rows.append((re.findall(r"`(--[a-z0-9-]+)`", first), default))
    return rows


def test_settings_table_defaults_are_the_ones_help_shows() -> None:
    """The README's default column and ``run --help`` agree: both come from the code's default,
    a literal in the README (`10`) is the default, and a flag without one has none."""
    env = EnvDefaults({})
    build_parser(env)
    help_text = " ".join(subparser("run").format_help().split())
    rows = settings_rows()
    assert rows
    for flags_in_row, cell in rows:
        literals = [v for v in re.findall(r"`([^`]+)`", cell) if not v.startswith("--")]
        for i, flag in enumerate(flags_in_row):
            default = env.builtin[flag]
            shown = ",".join(default) if isinstance(default, list) else default
            if shown in (None, ""):
                assert not literals, (flag, cell)
            else:
                assert literals[i] == shown, (flag, cell, shown)
                assert f"(default: {shown})" in help_text, flag


def test_inspect_and_drain_flags_are_documented() -> None:
    for command in ("inspect", "drain", "drains"):
        for flag in flags(subparser(command)) - {"--json"}:
            assert f"`{flag}`" in README or f"{flag} " in README, (command, flag)


def test_every_skip_reason_is_explained_in_the_readme() -> None:
    section = README.split("## `podlb-agent inspect`", 1)[1].split("\n## ", 1)[0]
    for reason in SKIP_REASONS:
        assert f"`{reason}`" in section, reason


def test_docs_stand_alone() -> None:
    """No link out of the repository, no private issue numbers."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs += sorted((ROOT / "daemonset").rglob("*.md"))
    for path in docs:
        text = path.read_text()
        assert "../shared" not in text, path
        assert not re.search(r"\(issue \d+\)|the drain issue|issue \d+\b", text), path
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not link.startswith(("http://", "https://")):
                assert (path.parent / link).exists(), (path, link)


def expand(name: str) -> list[str]:
    """`a_{b,c}_d_{e,f}` -> every combination."""
    m = re.match(r"(.*?)\{([^}]*)\}(.*)", name)
    if not m:
        return [name]
    return [v for part in m.group(2).split(",") for v in expand(m.group(1) + part + m.group(3))]


def exported() -> set[str]:
    """Every metric family name the agent exports (one pod with one interface in view)."""
    registry = CollectorRegistry()
    Metrics(registry)
    iface = Interface("eth0", 2, LinkKind.VETH, None, None, 1500, "up", ("10.0.0.1/32",))
    ns = NetnsInfo(1, "/x", ("/x",), (), None, (iface,), TcpState())
    pod = Pod("shop", "web", "u", "n1", ("10.0.0.1",), "Running")
    registry.register(PodCollector(lambda: [PodView(pod, ns, True, True, "Ready", frozenset())]))
    registry.register(NodeCollector())
    names = {family.name for family in registry.collect()}
    source = (ROOT / "agent" / "metrics.py").read_text()
    # conntrack series exist only where the module is loaded: take those from the source
    names |= set(re.findall(r'"(podlb_node_conntrack_[a-z_]+)"', source))
    return names


def test_every_metric_in_the_readme_is_exported() -> None:
    names = exported()
    documented = set(re.findall(r"`(podlb_[a-z0-9_{},]+)`", README))
    assert documented
    for raw in documented:
        raw = re.sub(r"\{[a-z_]+\}$", "", raw)  # a trailing {label} is not part of the name
        for name in expand(raw):
            assert name.removesuffix("_total") in names, f"{name}: in the README, not exported"


def test_every_exported_metric_is_in_the_readme() -> None:
    documented = {
        name.removesuffix("_total")
        for raw in re.findall(r"`(podlb_[a-z0-9_{},]+)`", README)
        for name in expand(re.sub(r"\{[a-z_]+\}$", "", raw))
    }
    assert exported() - documented == set()


def events_rows() -> list[tuple[str, str, str]]:
    """(condition, reason, Event type) of each row of the README's "Conditions and Events"
    table; an empty condition cell repeats the one above."""
    section = README.split("### Conditions and Events", 1)[1].split("\n### ", 1)[0]
    rows, condition = [], ""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[1].startswith("`"):
            continue
        condition = cells[0].strip("`") or condition
        rows.append((condition, cells[1].strip("`"), cells[3]))
    return rows


def test_readme_says_which_condition_events_are_warnings() -> None:
    """Every reason of both conditions is in the README's table with the Event type
    ``agent.events`` gives it."""
    said = {Kind.EXPECTED: "Normal", Kind.PROBLEM: "Warning", Kind.LOSS: LOSS_TEXT}
    rows = events_rows()
    assert len(rows) == len(set((c, r) for c, r, _ in rows))
    assert {(c, r): t for c, r, t in rows} == {
        (c, str(r)): said[kind] for (c, r), kind in KINDS.items()
    }


def test_readme_lists_every_service_problem_as_a_warning() -> None:
    section = README.split("### Conditions and Events", 1)[1].split("\n### ", 1)[0]
    warnings = section.split("Other Events", 1)[1]
    for problem in Problem:
        assert f"`{problem.value}`" in warnings, problem


def test_readme_lists_the_node_agents_other_events_with_their_type() -> None:
    section = README.split("### Conditions and Events", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.split("Other Events", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert rows == {reason: str(kind) for reason, kind in OTHER_EVENTS.items()}


def test_readme_documents_every_drain_outcome_and_record_field() -> None:
    section = README.split("### Drain records", 1)[1].split("\n### ", 1)[0]
    for outcome in Outcome:
        assert f"| `{outcome.value}` |" in section, outcome
    for name in DrainRecord.__dataclass_fields__:
        assert f"`{name}`" in section, name
