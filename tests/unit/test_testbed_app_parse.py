"""The pod app's request parser and command line: complete, incomplete and refused input."""

from __future__ import annotations

import pytest

from tests.testbed.app import BadRequest, parse_args, parse_request, query


def test_a_complete_request_and_its_size() -> None:
    buf = b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\n"
    req = parse_request(buf)
    assert req is not None
    assert (req.method, req.target, req.keep_alive) == ("GET", "/x?a=1", True)
    assert buf[req.size :] == b"GET / HTTP/1.1\r\n"  # the next (pipelined) one stays


@pytest.mark.parametrize(
    "buf",
    [b"", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"],
)
def test_incomplete_requests_wait(buf: bytes) -> None:
    assert parse_request(buf) is None


def test_a_body_is_counted_and_skipped() -> None:
    buf = b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET"
    req = parse_request(buf)
    assert req is not None and buf[req.size :] == b"GET"


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", "", True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.0", "", False),
        ("HTTP/1.0", "keep-alive", True),
    ],
)
def test_keep_alive_by_version_and_connection(
    version: str, connection: str, keep_alive: bool
) -> None:
    head = f"GET / {version}\r\n" + (f"Connection: {connection}\r\n" if connection else "")
    req = parse_request(head.encode() + b"\r\n")
    assert req is not None and req.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("buf", "code"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"hello\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /" + b"a" * 70000, 414),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 12000, 431),
    ],
)
def test_refused_requests(buf: bytes, code: int) -> None:
    with pytest.raises(BadRequest) as e:
        parse_request(buf)
    assert e.value.code == code


def test_query_first_value_wins() -> None:
    assert query("/?delay_ms=5&ok=0&ok=1&flag") == {"delay_ms": "5", "ok": "0", "flag": ""}
    assert query("/") == query("/?&") == {}


def test_command_line_forms_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "from-env")
    monkeypatch.setenv("APP_DELAY_MS", "7")
    opts = parse_args(["--port", "8080", "--drain-timeout=1.5", "--host", "::"])
    assert (opts.port, opts.name, opts.host, opts.delay_ms) == (8080, "from-env", "::", 7)
    assert (opts.drain_timeout, opts.ready_file) == (1.5, None)
    opts = parse_args(["--port=1", "--name", "p", "--delay-ms", "50", "--ready-file", "/r"])
    assert (opts.name, opts.delay_ms, opts.ready_file) == ("p", 50, "/r")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "--port is required"),
        (["--port", "x"], "--port: invalid value 'x'"),
        (["--port", "1", "--name"], "--name: expected a value"),
        (["--port", "1", "--delay", "5"], "unrecognized argument '--delay'"),
    ],
)
def test_bad_command_lines_exit_2(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert f"error: {error}\n" in capsys.readouterr().err
