"""A module tests/test_zygote.py runs with `python -m`: it executes the code in $PROBE_CODE."""

import os

exec(os.environ["PROBE_CODE"])
