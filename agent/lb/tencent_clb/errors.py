"""CLB error codes (pure): the few classes the provider acts on (API 2018-03-17)."""

from __future__ import annotations

import enum


class ErrorClass(enum.StrEnum):
    THROTTLED = "throttled"  # retry after a backoff
    BUSY = "busy"  # the LB runs another task: retry after a backoff
    NETWORK = "error"  # no answer, or a server-side error: retry
    AUTH = "auth"
    QUOTA = "quota"
    NOT_FOUND = "not_found"  # the LB, listener or rule does not exist
    REJECTED = "rejected"


_NOT_FOUND = frozenset(
    {
        "InvalidParameter.LBIdNotFound",
        "InvalidParameter.ListenerIdNotFound",
        "InvalidParameter.LocationNotFound",
        "ResourceNotFound",
    }
)
_NETWORK = frozenset({"ClientNetworkError", "ServerNetworkError", "InternalError"})


def classify_error(code: str) -> ErrorClass:
    """The class of an API error code (common and CLB codes, API 2018-03-17)."""
    head = code.split(".", 1)[0]
    if head == "RequestLimitExceeded":
        return ErrorClass.THROTTLED
    if code == "FailedOperation.ResourceInOperating":
        return ErrorClass.BUSY
    if head in ("AuthFailure", "UnauthorizedOperation"):
        return ErrorClass.AUTH
    if head == "LimitExceeded":
        return ErrorClass.QUOTA
    if code in _NOT_FOUND or head == "ResourceNotFound":
        return ErrorClass.NOT_FOUND
    if head in _NETWORK or code.startswith("InternalError"):
        return ErrorClass.NETWORK
    return ErrorClass.REJECTED


def outcome_label(cls: ErrorClass | None) -> str:
    """The bounded ``on_call`` outcome: ok, throttled, auth, quota, rejected or error."""
    if cls is None:
        return "ok"
    if cls in (ErrorClass.THROTTLED, ErrorClass.BUSY):
        return "throttled"
    if cls is ErrorClass.NOT_FOUND:
        return "rejected"
    return str(cls)


def auth_message(action: str, code: str, message: str) -> str:
    """What an operator must fix, from an auth error."""
    if code.startswith("UnauthorizedOperation") or code == "AuthFailure.UnauthorizedOperation":
        return (
            f"Tencent Cloud refused {action}: the credential's CAM policy lacks clb:{action}"
            f" ({code}: {message})"
        )
    return (
        f"Tencent Cloud refused the credentials on {action} ({code}: {message}); check"
        " PODLB_TENCENT_SECRET_ID / PODLB_TENCENT_SECRET_KEY and the clock"
    )
