"""Fixtures shared by the CLI tests."""
from tests.cli.test_cost_report import ledger_now  # noqa: F401 - a fixture (a frozen ledger clock)
