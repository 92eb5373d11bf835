from faceseg.cli import main

raise SystemExit(main())
