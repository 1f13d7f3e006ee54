"""`python -m vlm_operator` is the same as the `vlm-operator` command."""

from vlm_operator.cli import main

raise SystemExit(main())
