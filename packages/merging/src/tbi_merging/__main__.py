"""``python -m tbi_merging``."""

import sys

from tbi_merging.cli import main

sys.exit(main())
