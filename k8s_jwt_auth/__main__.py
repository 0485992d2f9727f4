"""`python -m k8s_jwt_auth` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
