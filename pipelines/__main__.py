"""`python -m pipelines`: the same command line as `vpns-deploy`."""
from pipelines.cli import main

main()
