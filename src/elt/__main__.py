"""`python -m elt ...` is the `elt` command (torchrun: `torchrun ... -m elt train ...`)."""
import sys

from .apps.cli import main

sys.exit(main())
