"""`python -m aiopt`: the same command line as the `aiopt` script."""
import os
import sys

from aiopt.cli import main

try:
    main()
except SystemExit as done:
    if done.code != 130:
        raise
    # After Ctrl-C, CPython 3.11 run with -m kills itself by SIGINT instead of exiting 130 whenever
    # the KeyboardInterrupt once escaped an exec() of a string (dataclasses and torch generate
    # code that way), even though aiopt caught it. Everything was cleaned up on the way here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
