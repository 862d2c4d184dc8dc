"""Entry point for `python -m minigpt_lib`."""

import sys

from .cli import main

sys.exit(main())
