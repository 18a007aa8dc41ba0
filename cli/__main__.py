from tiertop.main import main

raise SystemExit(main())
