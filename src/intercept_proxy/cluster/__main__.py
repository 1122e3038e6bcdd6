import sys

from intercept_proxy.cluster.cli import main

sys.exit(main())
