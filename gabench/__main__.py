import sys

from gabench.cli import main

sys.exit(main())
