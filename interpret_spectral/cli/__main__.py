"""``python -m interpret_spectral.cli``: the same as the ``interpret-spectral`` command."""

import sys

from interpret_spectral.cli import main

sys.exit(main())
