"""`python -m central_sync.cli`: the same as the `central-sync` command."""

import sys

from central_sync.cli import main

if __name__ == "__main__":
    sys.exit(main())
