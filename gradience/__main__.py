import sys

from gradience.cli import main

sys.exit(main())
