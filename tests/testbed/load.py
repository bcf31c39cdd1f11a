"""A bounded HTTP load generator (threads + ``http.client``) for tests and benches.

::

    res = run_load("http://127.0.0.1:8080/", mode="keepalive", concurrency=4, duration=2.0)
    print(res.summary()); assert res.errors_total == 0; res.by_pod  # {"pod-a": 812, ...}

    with LoadGenerator(url, duration=30, rate=200) as gen:   # in the background
        do_a_rolling_update()
    res = gen.result()  # stops it (if still running) and returns the result

Modes: ``new`` opens a connection per request; ``keepalive`` reuses one connection per worker
(reconnecting after an error or a ``Connection: close``). A run is bounded by ``count`` and/or
``duration`` and always stops by itself (``max_duration`` caps a count-only run). ``rate``
(requests/s over all workers) paces the run; without it every worker goes as fast as it can.

Errors are counted by kind (:data:`ERROR_KINDS`, each explained in :data:`ERROR_MEANINGS`):
``refused``, ``unreachable``, ``reset`` (reset, broken pipe, closed without a response,
truncated body), ``timeout``, ``5xx``, ``4xx``, and ``other`` for anything else (rare: the
exception is kept in ``error_events``). Latencies are of successful (2xx) requests. The body
of a 2xx response is taken as the name of the pod that answered (the testbed app answers with
its pod name).
"""

from __future__ import annotations

import errno
import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

ERROR_KINDS = ("refused", "unreachable", "reset", "timeout", "5xx", "4xx", "other")
ERROR_MEANINGS = {
    "refused": "connection refused: nothing listening",
    "unreachable": "no route to the address",
    "reset": "connection reset or closed before a whole response",
    "timeout": "no answer within the client's timeout",
    "5xx": "a 5xx answer; from HAProxy, 503: it could not connect to the pod it picked (gone "
    "or not listening), 502: the pod closed the connection mid-request",
    "4xx": "a 4xx answer",
    "other": "any other failure (see error_events)",
}
_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH)
MODES = ("new", "keepalive")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def classify(exc: BaseException) -> str:
    """Error kind of an exception raised while doing one request."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(
        exc,
        ConnectionResetError
        | BrokenPipeError
        | ConnectionAbortedError
        | http.client.RemoteDisconnected
        | http.client.IncompleteRead,
    ):
        return "reset"
    return "other"


@dataclass(frozen=True)
class LoadResult:
    """What a run saw. Times in seconds since the start of the run, latencies in ms."""

    url: str
    mode: str
    concurrency: int
    duration_s: float
    requests: int
    ok: int
    errors: Mapping[str, int]
    status_codes: Mapping[int, int]
    by_pod: Mapping[str, int]
    first_seen: Mapping[str, float]
    last_seen: Mapping[str, float]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_events: tuple[tuple[float, str, str], ...] = field(default=())
    started_at: float = 0.0  # the run's start, wall clock (time.time()): to match agents' logs

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors_total / self.requests if self.requests else 0.0

    def summary(self) -> str:
        errs = " ".join(f"{k}={v}" for k, v in self.errors.items() if v) or "none"
        pods = " ".join(f"{k}={v}" for k, v in sorted(self.by_pod.items())) or "-"
        return (
            f"{self.mode} x{self.concurrency} {self.url}: {self.requests} req in "
            f"{self.duration_s:.2f}s ({self.rps:.0f}/s), ok {self.ok}, errors {errs}; "
            f"latency ms p50 {self.p50_ms:.1f} p90 {self.p90_ms:.1f} p99 {self.p99_ms:.1f} "
            f"max {self.max_ms:.1f}; pods {pods}"
        )


class _Worker:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.pods: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.events: list[tuple[float, str, str]] = []
        self.requests = 0
        self.end: float | None = None


class LoadGenerator:
    """Background load; see the module docstring. ``result()`` stops it and returns counts."""

    MAX_EVENTS = 2000

    def __init__(
        self,
        url: str,
        *,
        mode: str = "new",
        concurrency: int = 4,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
        timeout: float = 2.0,
        max_duration: float = 300.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if count is None and duration is None:
            raise ValueError("give count and/or duration: a run must stop by itself")
        if concurrency < 1:
            raise ValueError("concurrency >= 1")
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"only http://host:port/path URLs: {url!r}")
        self.url = url
        self.host = u.hostname
        self.port = u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.mode = mode
        self.concurrency = concurrency
        self.count = count
        self.duration = min(duration, max_duration) if duration is not None else max_duration
        self.rate = rate
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._issued = 0
        self._workers = [_Worker() for _ in range(concurrency)]
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._t0_wall = 0.0
        self._result: LoadResult | None = None

    # -- control ------------------------------------------------------------------------
    def start(self) -> LoadGenerator:
        if self._threads:
            raise RuntimeError("already started")
        self._t0 = time.monotonic()
        self._t0_wall = time.time()
        for i, w in enumerate(self._workers):
            t = threading.Thread(target=self._run, args=(w,), name=f"load-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end by itself; True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)
        return not any(t.is_alive() for t in self._threads)

    def result(self) -> LoadResult:
        """Stop (if running), wait for the workers, and return the result."""
        if self._result is None:
            self.stop()
            self.wait(self.timeout + 5)
            self._result = self._collect()
        return self._result

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.result()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    # -- work ---------------------------------------------------------------------------
    def _ticket(self) -> int | None:
        """The index of the next request, or None when the run is over."""
        with self._lock:
            if self._stop.is_set():
                return None
            if self.count is not None and self._issued >= self.count:
                self._stop.set()
                return None
            if time.monotonic() - self._t0 >= self.duration:
                self._stop.set()
                return None
            n = self._issued
            self._issued += 1
            return n

    def _run(self, w: _Worker) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while (n := self._ticket()) is not None:
                if self.rate:
                    due = self._t0 + n / self.rate
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    if time.monotonic() - self._t0 >= self.duration:
                        return
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                keep = self._one(w, conn)
                if not keep or self.mode == "new":
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
            w.end = time.monotonic()

    def _one(self, w: _Worker, conn: http.client.HTTPConnection) -> bool:
        """Do one request; return True when the connection may be reused."""
        start = time.monotonic()
        w.requests += 1
        try:
            conn.request("GET", self.path, headers=self.headers)
            resp = conn.getresponse()
            body = resp.read()
        except Exception as exc:
            self._error(w, classify(exc), repr(exc), start)
            return False
        now = time.monotonic()
        w.status[resp.status] += 1
        if 200 <= resp.status < 300:
            w.latencies.append((now - start) * 1000)
            pod = body.decode(errors="replace").strip()
            t = now - self._t0
            w.pods[pod] += 1
            w.first.setdefault(pod, t)
            w.last[pod] = t
        elif resp.status >= 500:
            self._error(w, "5xx", str(resp.status), start)
        elif resp.status >= 400:
            self._error(w, "4xx", str(resp.status), start)
        else:  # 1xx (after the interim answers http.client skips) or 3xx
            self._error(w, "other", str(resp.status), start)
        return not resp.will_close

    def _error(self, w: _Worker, kind: str, detail: str, start: float) -> None:
        w.errors[kind] += 1
        if len(w.events) < self.MAX_EVENTS:
            w.events.append((start - self._t0, kind, detail))

    def _collect(self) -> LoadResult:
        lat: list[float] = sorted(x for w in self._workers for x in w.latencies)
        status: Counter[int] = Counter()
        errors: Counter[str] = Counter({k: 0 for k in ERROR_KINDS})
        pods: Counter[str] = Counter()
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        events: list[tuple[float, str, str]] = []
        for w in self._workers:
            status.update(w.status)
            errors.update(w.errors)
            pods.update(w.pods)
            for p, t in w.first.items():
                first[p] = min(t, first.get(p, t))
            for p, t in w.last.items():
                last[p] = max(t, last.get(p, t))
            events += w.events
        events.sort()
        ends = [w.end for w in self._workers]
        end = max(e for e in ends if e is not None) if None not in ends else time.monotonic()
        duration = end - self._t0
        return LoadResult(
            url=self.url,
            mode=self.mode,
            concurrency=self.concurrency,
            duration_s=duration,
            requests=sum(w.requests for w in self._workers),
            ok=sum(v for k, v in status.items() if 200 <= k < 300),
            errors=MappingProxyType({k: errors[k] for k in ERROR_KINDS}),
            status_codes=MappingProxyType(dict(status)),
            by_pod=MappingProxyType(dict(pods)),
            first_seen=MappingProxyType(first),
            last_seen=MappingProxyType(last),
            p50_ms=percentile(lat, 50),
            p90_ms=percentile(lat, 90),
            p99_ms=percentile(lat, 99),
            max_ms=lat[-1] if lat else 0.0,
            error_events=tuple(events[: self.MAX_EVENTS]),
            started_at=self._t0_wall,
        )


def run_load(url: str, **kwargs: object) -> LoadResult:
    """Run :class:`LoadGenerator` in the foreground until it stops by itself."""
    gen = LoadGenerator(url, **kwargs)  # type: ignore[arg-type]
    gen.start()
    gen.wait()
    return gen.result()
