from torchrest.cli import main

raise SystemExit(main())
