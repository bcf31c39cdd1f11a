"""HAProxy Runtime API commands and their answers (pure): what an
:class:`agent.lb.base.Action` sends, and whether HAProxy's answer says it was done.

Tested with answers captured from HAProxy 2.6.12 (tests/unit/test_haproxy_parse.py); the I/O
is in :mod:`agent.lb.haproxy`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from agent.lb.base import Action, Op

# HAProxy accepts these characters in proxy and server names (``invalid_char()``); checking
# them here also keeps a name from smuggling a second command (newline, ``;``, space).
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


# -- answers (pure) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    reason: str  # "ok" or a short, bounded failure code
    text: str  # HAProxy's answer, stripped

    def describe(self) -> str:
        return f"{self.reason}: {self.text}" if self.text else self.reason


# Failure texts of HAProxy 2.6.12, first match wins (see tests/unit/test_haproxy_parse.py).
FAILURES: tuple[tuple[str, str], ...] = (
    ("Already exists a server with the same name", "exists"),
    ("No such server", "no_server"),
    ("No such backend", "no_backend"),
    ("Can't find backend", "no_backend"),
    ("No such proxy", "no_backend"),
    ("Only servers in maintenance mode can be deleted", "not_in_maint"),
    ("still has connections attached", "has_connections"),
    ("Unknown command", "unknown_command"),
    ("Permission denied", "denied"),
)
# Commands that print a success message; every other change command prints nothing on success.
SUCCESS_TEXT = {"add server": "New server registered.", "del server": "Server deleted."}


def command_verb(cmd: str) -> str:
    """The bounded label of a command: ``add server``, ``set server``, ``show servers state``."""
    words = cmd.split()
    if words[:3] == ["show", "servers", "state"]:
        return "show servers state"
    return " ".join(words[:2])


def classify_answer(cmd: str, text: str) -> Answer:
    """Success or rejection of ``cmd`` from HAProxy's answer ``text``."""
    body = text.strip()
    verb = command_verb(cmd)
    # A failure is said in the answer's first line: a `show` answer (4 MB of `show stat` at
    # 10,000 servers) is not searched through for each failure text.
    said = body
    if verb.startswith("show "):
        nl = body.find("\n")
        said = body[:nl] if nl > 0 else body[:512]
    for needle, reason in FAILURES:
        if needle in said:
            return Answer(False, reason, body)
    if verb in SUCCESS_TEXT:
        return Answer(
            SUCCESS_TEXT[verb] in body, "ok" if SUCCESS_TEXT[verb] in body else "rejected", body
        )
    if verb.startswith("show "):
        return Answer(True, "ok", body)
    # enable/disable health|server, set server ...: silence is success; anything said is a
    # rejection ("unknown keyword 'x'.", "Absolute weight can only be between 0 and 256 ...").
    return Answer(not body, "ok" if not body else "rejected", body)


def retried_answer(cmd: str, answer: Answer) -> Answer:
    """The answer to a command sent again after its first answer was lost: the first one may
    have run, so ``exists`` to an ``add server`` and ``no_server`` to a ``del server`` are
    what that success looks like now."""
    if (command_verb(cmd), answer.reason) in {
        ("add server", "exists"),
        ("del server", "no_server"),
    }:
        return Answer(True, "ok", answer.text)
    return answer


# -- commands (pure) ----------------------------------------------------------------------
def format_address(address: str, port: int) -> str:
    """``addr:port`` as ``add server`` parses it: IPv6 in brackets (without them HAProxy 2.6
    splits ``fd00::4`` at the last colon and takes ``fd00:`` for an FQDN). Only IP literals
    are accepted: a name would become an FQDN server that never resolves without resolvers."""
    ip = ipaddress.ip_address(address)  # ValueError if not an IP literal
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def action_steps(pool: str, action: Action, server_options: str) -> list[list[str]]:
    """The command phases of one action: a phase runs only if the previous one succeeded.

    ``ValueError`` for an action that cannot be expressed (no address, bad name ...).
    """
    if not valid_name(action.server):
        raise ValueError(f"server name {action.server!r} has characters HAProxy refuses")
    srv = f"{pool}/{action.server}"
    if action.op in (Op.ADD, Op.STAGE):
        if action.address is None or action.port is None:
            raise ValueError(f"{action.op.value} needs an address and a port")
        add = f"add server {srv} {format_address(action.address, action.port)}"
        if server_options:
            add += f" {server_options}"
        if action.weight is not None:
            add += f" weight {int(action.weight)}"
        # An added server starts in maintenance: ready (ADD), or drain (STAGE: no new traffic,
        # health checks running).
        ready = f"enable server {srv}" if action.op is Op.ADD else f"set server {srv} state drain"
        follow = [ready]
        if "check" in server_options.split():
            follow.insert(0, f"enable health {srv}")
        if action.op is Op.STAGE:
            # One phase: a STAGE takes no traffic, so its follow-ups may run even if the add
            # failed (on a server that exists they set what is wanted; else they are refused).
            # On an LB API that takes a second per call, the pod is staged a second sooner.
            return [[add, *follow]]
        return [[add], follow]
    if action.op is Op.SET_WEIGHT:
        if action.weight is None:
            raise ValueError("set_weight needs a weight")
        return [[f"set server {srv} weight {int(action.weight)}"]]
    if action.op is Op.ENABLE:
        # Checks first: a server whose add was cut short has them off (enabling them again is
        # a no-op). One phase: a server without a check still gets ready.
        enable = [f"set server {srv} state ready"]
        if "check" in server_options.split():
            enable.insert(0, f"enable health {srv}")
        return [enable]
    if action.op is Op.DRAIN:
        return [[f"set server {srv} state drain"]]
    if action.op is Op.REMOVE:
        return [[f"set server {srv} state maint"], [f"del server {srv}"]]
    raise ValueError(f"unknown op {action.op!r}")


def split_answers(data: bytes) -> tuple[list[str], int]:
    """Complete answers in an interactive-mode stream and how many bytes they used.

    The stream is ``"\\n> " A1 "> " A2 "> " ...``: each answer ends with a newline followed by
    the prompt, so ``"\\n> "`` ends every answer (the first, empty one belongs to ``prompt``).
    """
    answers = []
    pos = 0
    while (i := data.find(b"\n> ", pos)) >= 0:
        answers.append(data[pos:i].decode(errors="replace"))
        pos = i + 3
    return answers, pos
