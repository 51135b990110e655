import os
import sys

from recbole_kd.cli import main

if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (e.g. `--list | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        code = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
    sys.exit(code)
