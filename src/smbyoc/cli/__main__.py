"""``python -m smbyoc.cli``."""

from smbyoc.cli import main

main()
