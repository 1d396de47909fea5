from imgext._cli import main

raise SystemExit(main())
