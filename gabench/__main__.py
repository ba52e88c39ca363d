"""``python -m gabench``: the same as the ``gabench`` command."""

import sys

from gabench.commands import main

sys.exit(main())
