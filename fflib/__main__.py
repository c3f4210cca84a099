"""``python -m fflib``: see fflib.cli."""
import sys

from .cli import main

sys.exit(main())
