import sys

from intercept_proxy.cluster.node.agent import main

sys.exit(main(sys.argv[1:]))
