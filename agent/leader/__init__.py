"""The leader: desired backends (pure), LB diff (pure) and the reconcile loop."""
