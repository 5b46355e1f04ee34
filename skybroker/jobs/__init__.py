"""Managed jobs: run a task to completion through spot preemptions, with a controller on the user's
side (no controller VM): store.py (SQLite rows), recovery.py (pure decisions), controller.py (the loop),
ops.py (use cases for the CLI)."""
