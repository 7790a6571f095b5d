"""`python -m notifier` is the same as the `notifier` console script."""

from notifier.cli import main

main()
