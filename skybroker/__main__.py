"""`python -m skybroker` runs the `broker` command (the same entry function as the console script)."""
from .entry import main

if __name__ == "__main__":
    main()
