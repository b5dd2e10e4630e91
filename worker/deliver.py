"""`python -P -m worker.deliver`: one delivery process, as a worker starts it."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from worker.entry import deliver, main

    sys.exit(main(deliver))
