"""``python -m stsun``: the CLI."""
from stsun.app.cli import main

main()
