"""``python -m llcv`` runs the command line."""

from llcv.cli import main

main()
