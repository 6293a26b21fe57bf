"""`python -m invmm.cli`: the same command as `invmm`."""

from invmm.cli import main

main()
