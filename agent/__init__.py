"""podlb: node agent for direct-to-pod load balancing on Kubernetes."""

__version__ = "0.1.0"
