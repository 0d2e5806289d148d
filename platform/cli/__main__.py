"""`python -m hiir.platform.cli`, the same as the `hiir` script."""
from hiir.platform.cli import main

main()
