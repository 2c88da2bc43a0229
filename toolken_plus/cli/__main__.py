"""`python -m toolken_plus.cli`: the `toolken-plus` command."""

import sys

from toolken_plus.cli.commands import main

sys.exit(main())
