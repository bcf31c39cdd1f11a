"""What every benchmark does first."""

from __future__ import annotations

import os
import signal
import sys


def prepare(needs: str) -> bool:
    """Make SIGTERM run the clean-up (namespaces, HAProxy, agent processes: it becomes
    SystemExit, so every ``with`` and ``finally`` runs) and check for root. False, with a
    message, when not root."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if os.geteuid() != 0:
        print(f"needs root ({needs})", file=sys.stderr)
        return False
    return True
