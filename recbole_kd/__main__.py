import sys

from recbole_kd.cli import main

if __name__ == "__main__":
    sys.exit(main())
