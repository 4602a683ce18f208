import sys

from mtsae.cli import main

sys.exit(main())
