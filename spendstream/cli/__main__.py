"""``python -m spendstream.cli``: how tests and ``spendstream.processes`` start commands."""

from spendstream.cli.app import main

if __name__ == "__main__":  # not on import (tests walk every module)
    main()
