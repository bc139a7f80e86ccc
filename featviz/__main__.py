"""``python -m featviz``: the same as the ``featviz`` command."""

from featviz.cli.main import main

main()
