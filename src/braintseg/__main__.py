"""``python -m braintseg`` runs the command-line interface."""

from braintseg.cli import cli

if __name__ == "__main__":
    cli()
