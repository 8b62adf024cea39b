"""``python -m compressjax`` runs the command-line interface."""

from compressjax.cli import main

if __name__ == "__main__":
  main()
