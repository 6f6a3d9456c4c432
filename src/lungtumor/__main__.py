from lungtumor.cli import main

raise SystemExit(main())
