"""`python -m edge_agent ...`: the same commands as `edge-agent`; the launcher starts a release
this way, with the release's own interpreter."""

import sys

from edge_agent.cli import main

sys.exit(main())
