"""Logging setup: text or JSON lines, one place."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            # Milliseconds: a pod's path through a round (seen, planned, applied, written)
            # takes well under a second.
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The client libraries are chatty at debug level; keep them at warning. The cloud SDKs
    # also log request signatures and signing keys at debug level: never let those through.
    for noisy in ("urllib3", "kubernetes", "baidubce", "tencentcloud", "tencentcloud_sdk_common"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
