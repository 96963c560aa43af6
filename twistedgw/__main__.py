import sys

from twistedgw.cli import main

sys.exit(main())
