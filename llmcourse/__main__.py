"""`python -m llmcourse ...`: see `llmcourse.cli`."""

from llmcourse.cli import main

raise SystemExit(main())
