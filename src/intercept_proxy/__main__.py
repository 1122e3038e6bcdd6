from intercept_proxy.cli import main

raise SystemExit(main())
