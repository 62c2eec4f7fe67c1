"""python -m llmstream.auth mint --sub alice --ttl 3600: print a token the authorizer accepts."""

from .tokens import main

raise SystemExit(main())
