"""`python -m monoscope ...`, the same as the `monoscope` command."""

import sys

from monoscope.cli import main

sys.exit(main())
