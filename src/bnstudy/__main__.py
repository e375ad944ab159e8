"""`python -m bnstudy <command>`, as the rules call it: through the execution's fork server when
there is one (bnstudy.forkserver: the job starts without importing torch), else in this process."""

import sys

from .forkserver import run_forked

code = run_forked(sys.argv[1:])
if code is None:
    from .cli import exit_now, main

    try:
        main()
    except SystemExit as stop:  # argparse, user errors, SIGTERM: the usual exit status and message
        if stop.code is None or isinstance(stop.code, int):
            exit_now(stop.code or 0)
        print(stop.code, file=sys.stderr)
        exit_now(1)
    exit_now(0)
sys.exit(code)
