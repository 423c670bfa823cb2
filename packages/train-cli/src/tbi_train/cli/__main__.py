"""`python -m tbi_train.cli` = `tbi`."""

from tbi_train.cli import main

main()
