"""`python -m banyan` == the `banyan` command (torchrun uses this form: `torchrun -m banyan pretrain`)."""

import sys

from banyan.cli import main

sys.exit(main())
