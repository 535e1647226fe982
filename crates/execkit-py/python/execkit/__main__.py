"""``python -m execkit ...``: the ``execkit`` command."""

from ._cli import main

main()
