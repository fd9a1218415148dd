"""``python -m smbyoc.training`` runs the ``train`` program (used by the process-mode emulator)."""

from smbyoc.training.main import main

main()
