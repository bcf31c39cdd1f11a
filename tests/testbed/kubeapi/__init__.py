"""A Kubernetes API server double for the official ``kubernetes`` client (see README.md)."""

from .server import Faults, KubeAPIServer, RecordedRequest, RequestInfo, Rule
from .store import Store

__all__ = ["Faults", "KubeAPIServer", "RecordedRequest", "RequestInfo", "Rule", "Store"]
