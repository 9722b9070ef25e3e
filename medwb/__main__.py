import sys

from medwb.cli import main

sys.exit(main())
