"""``python -m reference_models``: check every model, print the table, train 3-4-2."""

import sys

from .harness import main

sys.exit(main())
