"""``python -m cli``: the ``loracle`` command, without the installed script."""

from cli.main import main

main()
