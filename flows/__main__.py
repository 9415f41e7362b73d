"""``python -m flows``: the ``lacrima`` command without its installed script."""

from flows.cli import main

main()
