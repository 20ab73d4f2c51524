"""``python -m bench.control``: see the package's docstring."""

import sys

from bench.control.run import main

sys.exit(main())
