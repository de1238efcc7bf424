import sys

from immutools.cli import main

sys.exit(main())
