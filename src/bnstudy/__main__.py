"""`python -m bnstudy <command>`, as the rules call it: through the execution's fork server when
there is one (bnstudy.forkserver: the job starts without importing torch), else in this process."""

import sys

from .forkserver import run_forked

code = run_forked(sys.argv[1:])
if code is None:
    from .cli import exit_now, run

    exit_now(run(sys.argv[1:]))
sys.exit(code)
