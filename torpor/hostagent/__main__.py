"""``python -m torpor.hostagent NAME``: the host agent as `torpor start` spawns it, without the CLI's parser.

(``torpor hostagent NAME`` runs the same; this entry skips building the CLI, which a restore would wait for.)
"""

import sys

from torpor.hostagent.agent import main
from torpor.store.instance import home, instance_dir

if len(sys.argv) != 2:
    sys.exit("usage: python -m torpor.hostagent NAME")
raise SystemExit(main(sys.argv[1], instance_dir(sys.argv[1]), home()))
