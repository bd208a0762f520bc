"""``python -m distml`` (and ``torchrun ... -m distml run CONFIG``)."""
import sys

from distml.cli import main

sys.exit(main())
