"""``python -m logitcache`` runs the command-line interface (also under torchrun)."""

from logitcache_cli.main import main

main()
