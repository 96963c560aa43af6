import sys

from twistedgw.app import main

sys.exit(main())
