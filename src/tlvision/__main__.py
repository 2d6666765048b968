"""`python -m tlvision`: the CLI, as torchrun starts it (`torchrun ... -m tlvision train ...`)."""

import sys

from tlvision.cli import main

sys.exit(main())
