"""``python -m portanet`` runs the ``portanet`` command."""

import sys

from .cli import main

sys.exit(main())
