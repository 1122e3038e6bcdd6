from intercept_proxy.lab.server.main import main

raise SystemExit(main())
