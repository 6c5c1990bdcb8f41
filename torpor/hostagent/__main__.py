"""``python -m torpor.hostagent NAME``: the host agent as `torpor start` spawns it, without the CLI's parser.

(``torpor hostagent NAME`` runs the same; this entry skips building the CLI, which a restore would wait for.)
"""

import sys

from torpor.hostagent.launch import run

if len(sys.argv) != 2:
    sys.exit("usage: python -m torpor.hostagent NAME")
raise SystemExit(run(sys.argv[1]))
