"""`python -m tridiff ...` runs the command line of tridiff.cli (the same as `tridiff ...`)."""
from tridiff.cli import main

raise SystemExit(main())
