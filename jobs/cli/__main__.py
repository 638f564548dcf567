"""`python -m jobs.cli`: the same command line as the `llmbatch` console script."""

import sys

from jobs.cli.main import main

if __name__ == "__main__":  # not when a tool imports every module (the pickling test does)
    sys.exit(main())
