"""`python -m pipeline.bench`: the bench on its own (same options as `python -m pipeline bench`)."""

import sys

from pipeline.bench.runner import main

sys.exit(main())
