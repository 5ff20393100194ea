"""`python -m medscout_data.cli` runs the console script."""

from medscout_data.cli import main

main()
