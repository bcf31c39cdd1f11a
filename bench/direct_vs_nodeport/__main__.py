"""``python -m bench.direct_vs_nodeport``: see the package docstring and ``--help``."""

import sys

from bench.direct_vs_nodeport.run import main

sys.exit(main())
