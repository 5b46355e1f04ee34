"""What things cost: a ledger of what ran (ledger.py), the disk price table (disks.py), reports built from
the ledger (report.py) and budgets (budget.py).

Costs are accrued from the ledger, never recomputed from today's catalog: the price per node is frozen
when a cluster's instances are created (each recovery or market switch of a managed job creates a new
cluster, so it gets its own frozen price), and every state interval (up, stopped) is recorded.
"""
