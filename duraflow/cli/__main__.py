"""``python -m duraflow.cli``: the ``duraflow`` command."""

import sys

from duraflow.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
