"""``python -m imgclf.cli``: the ``imgclf`` command without its console script."""

import sys

from imgclf.cli import main

sys.exit(main())
