"""`python -m tlvision.cli`: the same as `python -m tlvision`."""

import sys

from tlvision.cli import main

sys.exit(main())
