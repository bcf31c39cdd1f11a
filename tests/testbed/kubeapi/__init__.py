"""A Kubernetes API server double for the official ``kubernetes`` client (see README.md)."""

from .auth import Rule
from .faults import Faults
from .routing import RecordedRequest, RequestInfo
from .server import KubeAPIServer
from .store import Store

__all__ = ["Faults", "KubeAPIServer", "RecordedRequest", "RequestInfo", "Rule", "Store"]
