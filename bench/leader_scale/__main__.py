"""``python -m bench.leader_scale``: see the package's docstring."""

import sys

from bench.leader_scale.run import main

sys.exit(main())
