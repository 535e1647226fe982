"""The ``execkit`` console script: the same command as the Rust binary."""

import sys


def main() -> None:
    """Runs ``execkit`` with this process's arguments and exits with its
    status."""
    from ._execkit import cli_main

    sys.exit(cli_main(sys.argv))


if __name__ == "__main__":
    main()
