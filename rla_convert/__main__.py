"""`python -m rla_convert ...` is the `rla-convert` command (for machines where the script is not on PATH)."""
import sys

from .cli import main

sys.exit(main())
