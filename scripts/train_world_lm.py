#!/usr/bin/env python
"""Train the world LM: see mtsae/harvest/world_lm.py (``--help``) and docs/world.md."""

import sys

from mtsae.evaluate.world_check import what_it_knows
from mtsae.harvest.world_lm import main

if __name__ == "__main__":
    sys.exit(main(probe=what_it_knows))  # harvest/ does not import evaluate/: the measure is passed in
