"""``python -m tools``: the ``dkim-relay`` command (bin/dkim-relay runs this)."""

import sys

from tools.cli import main

sys.exit(main())
