"""``python -m milterkit``: the same as the ``milterkit`` command."""

import sys

from milterkit.cli import main

sys.exit(main())
