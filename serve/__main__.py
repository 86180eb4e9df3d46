"""`python -m serve ...`: the same as `adaclip serve ...`."""

from __future__ import annotations

import sys

from serve.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
