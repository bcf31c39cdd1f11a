"""BLB errors (pure): a failed call's outcome by HTTP status and BCE code, and what a refused
create or delete means."""

from __future__ import annotations

from enum import StrEnum

# BCE common error codes (cloud.baidu.com/doc/BLB/s/Djwvxnzw6) and throttling codes seen on
# BCE services (429 is what the gateways answer; the codes are matched too).
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidHTTPAuthHeader"}
)
DENIED_CODES = frozenset({"AccessDenied", "OptInRequired"})
THROTTLE_CODES = frozenset(
    {"TooManyRequests", "RequestLimitExceeded", "RequestLimited", "Throttling", "QpsLimitExceeded"}
)


class Outcome(StrEnum):
    OK = "ok"
    THROTTLED = "throttled"
    CREDENTIALS = "credentials"  # the key pair is refused: every operation
    DENIED = "denied"  # the key has no permission for this operation
    QUOTA = "quota"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    ERROR = "error"  # 5xx, transport: retry

    @property
    def label(self) -> str:
        """The bounded ``on_call`` outcome: ok|throttled|auth|quota|rejected|error."""
        if self in (Outcome.CREDENTIALS, Outcome.DENIED):
            return "auth"
        if self is Outcome.NOT_FOUND:
            return "rejected"
        return self.value


def classify(status: int | None, code: str | None) -> Outcome:
    """One failed call by HTTP status (None: no answer) and BCE error code."""
    code = code or ""
    if code in CREDENTIAL_CODES or status == 401:
        return Outcome.CREDENTIALS
    if code in DENIED_CODES or status == 403:
        return Outcome.DENIED
    if status == 429 or code in THROTTLE_CODES:
        return Outcome.THROTTLED
    if code == "RequestExpired":  # signed too long ago (a slow call): a new signature helps
        return Outcome.ERROR
    if "quota" in code.lower():
        return Outcome.QUOTA
    if status is None or status >= 500:
        return Outcome.ERROR
    if status == 404:
        return Outcome.NOT_FOUND
    return Outcome.REJECTED


def says_exists(code: str, message: str) -> bool:
    """A create refused because the member is already there."""
    text = f"{code} {message}".lower()
    return "exist" in text and "not exist" not in text and "notexist" not in text


def says_missing(status: int | None, code: str, message: str) -> bool:
    """A delete refused because the member is gone."""
    text = f"{code} {message}".lower()
    return status == 404 or "nosuch" in text or "not exist" in text or "notfound" in text
