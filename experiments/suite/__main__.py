"""``python -m algornn.experiments.suite``: the same as ``algornn-suite``."""

import sys

from algornn.experiments.suite.cli import main

sys.exit(main())
