"""Every API call goes through :func:`call`: errors classified, requests counted."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException

from agent.errors import Conflict, NotFound, PermanentError, TransientError, Unauthorized

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_PIECE = 1 << 16  # bytes read from a response at a time


class Gone(TransientError):
    """The watch resourceVersion, or a list's continue token, is too old (HTTP 410): relist."""


class RequestObserver(Protocol):
    def __call__(self, verb: str, resource: str, code: str) -> None: ...


def _noop(verb: str, resource: str, code: str) -> None:
    del verb, resource, code


class DurationObserver(Protocol):
    def __call__(self, verb: str, resource: str, seconds: float) -> None: ...


def _no_duration(verb: str, resource: str, seconds: float) -> None:
    del verb, resource, seconds


class Calls:
    """Runs API calls, turns library errors into ours and reports (verb, resource, code),
    and how long each call took, answered or not (to its answer's headers: a list read in
    pieces, :meth:`read`, or a watch's stream, are not in it)."""

    def __init__(
        self, observe: RequestObserver = _noop, timed: DurationObserver = _no_duration
    ) -> None:
        self.observe = observe
        self.timed = timed

    def __call__(self, verb: str, resource: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        t0 = time.monotonic()
        try:
            result = fn(*args, **kw)
        except ApiException as exc:
            self.observe(verb, resource, str(exc.status or 0))
            raise classify(exc, f"{verb} {resource}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.observe(verb, resource, "error")
            raise TransientError(f"{verb} {resource}: {exc}") from exc
        finally:
            self.timed(verb, resource, time.monotonic() - t0)
        self.observe(verb, resource, "200")
        return result

    def read(self, verb: str, resource: str, resp: Any) -> bytearray:
        """The whole body of a ``_preload_content=False`` answer. Reading is part of the call:
        a connection dropped mid-body is a ``TransientError`` like one dropped before it.

        Read in pieces into one buffer that grows in place: urllib3's ``data`` keeps every
        piece of a chunked body and then joins them (about three times the body at once, 20
        MB for a list page of 500 realistic pods instead of 7)."""
        data = bytearray()
        try:
            for piece in resp.stream(READ_PIECE, decode_content=True):
                data += piece
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.observe(verb, resource, "error")
            raise TransientError(f"{verb} {resource}: reading the answer: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                resp.release_conn()
        return data

    def stream(self, verb: str, resource: str, events: Iterator[T]) -> Iterator[T]:
        """Iterate a watch stream, classifying its errors the same way (410 -> Gone)."""
        try:
            yield from events  # the request itself was counted when it was made
        except ApiException as exc:
            self.observe(verb, resource, str(exc.status or 0))
            if exc.status == 410:
                raise Gone(f"{verb} {resource}: 410 Gone") from exc
            raise classify(exc, f"{verb} {resource}") from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            self.observe(verb, resource, "error")
            raise TransientError(f"{verb} {resource}: {exc}") from exc


def classify(exc: ApiException, what: str) -> Exception:
    status = exc.status or 0
    reason = _reason(exc)
    msg = f"{what}: HTTP {status} {reason}".rstrip()
    if status == 404:
        return NotFound(msg)
    if status == 409:
        return Conflict(msg)
    if status == 410:
        return Gone(msg)
    if status in (401, 403):
        return Unauthorized(msg)
    if status == 429 or status >= 500 or status == 0:
        return TransientError(msg)
    return PermanentError(msg)


def retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header on the cause of ``exc``, if any."""
    cause = exc.__cause__
    if isinstance(cause, ApiException) and cause.headers:
        value = cause.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None
    return None


def _reason(exc: ApiException) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason or "")
    return str(body.get("message") or exc.reason or "")
