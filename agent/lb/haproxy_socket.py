"""The HAProxy Runtime API's connections (agent.lb.haproxy drives HAProxy through them):
endpoints (``unix:/path`` or ``tcp:HOST:PORT``), one command on a connection of its own
(non-interactive: the answer ends at EOF) or several pipelined on one (interactive, ``prompt``
mode: each answer ends with ``"\\n> "``). Each exchange is fenced (agent.lb.fence): none
starts once the leader's term has ended."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from agent.lb.fence import fenced_call
from agent.lb.haproxy_commands import split_answers


# -- endpoints ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Endpoint:
    """A Runtime API address: ``unix:/path`` or ``tcp:HOST:PORT`` (``tcp:[::1]:9999``)."""

    raw: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def connect(self, timeout: float) -> socket.socket:
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            return sock
        assert self.host is not None and self.port is not None
        return socket.create_connection((self.host, self.port), timeout=timeout)


def parse_endpoint(raw: str) -> Endpoint:
    """Validate one endpoint string; ``ValueError`` with the accepted forms otherwise."""
    expected = "expected unix:/path/to/socket or tcp:HOST:PORT"
    kind, sep, rest = raw.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: {expected}")
    if kind == "unix":
        if "\0" in rest:
            raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: NUL in path")
        return Endpoint(raw, path=rest)
    if kind == "tcp":
        host, sep, port_s = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: {expected}")
        return Endpoint(raw, host=host, port=int(port_s))
    raise ValueError(f"bad HAProxy runtime endpoint {raw!r}: {expected}")


# -- I/O ----------------------------------------------------------------------------------
class Incomplete(Exception):
    """The connection failed after ``answers`` (for the first commands) came back."""

    def __init__(self, answers: list[str], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.answers = answers
        self.cause = cause


@fenced_call("HAProxy runtime API command")
def exchange_one(ep: Endpoint, cmd: str, timeout: float) -> str:
    """One command in non-interactive mode: the answer is everything up to EOF."""
    try:
        with ep.connect(timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(cmd.encode() + b"\n")
            answer = bytearray()  # grows in place: no list of pieces joined into a copy
            while data := sock.recv(1 << 16):
                answer += data
    except OSError as e:
        raise Incomplete([], e) from e
    return answer.decode(errors="replace")


@fenced_call("HAProxy runtime API commands")
def exchange_many(ep: Endpoint, commands: Sequence[str], timeout: float) -> list[str]:
    """Commands pipelined on one interactive connection; reads while it writes, so a large
    batch cannot deadlock on full socket buffers. ``timeout``: longest time without progress."""
    payload = memoryview(("prompt\n" + "".join(c + "\n" for c in commands) + "quit\n").encode())
    answers: list[str] = []
    want = len(commands) + 1  # the empty answer of "prompt" comes first
    got = 0
    buf = bytearray()
    try:
        sock = ep.connect(timeout)
    except OSError as e:
        raise Incomplete([], e) from e
    sel = selectors.DefaultSelector()
    try:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while got < want:
            events = sel.select(timeout)
            if not events:
                raise TimeoutError(f"no answer for {timeout}s")
            for _key, mask in events:
                if mask & selectors.EVENT_WRITE and payload:
                    n = sock.send(payload[: 1 << 18])
                    payload = payload[n:]
                    if not payload:
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise ConnectionError("HAProxy closed the connection")
                    buf += data
                    new, used = split_answers(bytes(buf))
                    del buf[:used]
                    for text in new:
                        if got > 0:
                            answers.append(text)
                        got += 1
    except OSError as e:
        raise Incomplete(answers, e) from e
    finally:
        sel.close()
        sock.close()
    return answers
