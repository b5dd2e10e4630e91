"""`python -P -m worker [--burst]`: one worker, as `postback up` starts it."""

from __future__ import annotations

import argparse
import sys

from worker.entry import main, work

parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
args = parser.parse_args()
sys.exit(main(lambda settings: work(settings, burst=args.burst)))
