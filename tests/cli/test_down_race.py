"""`broker down NAME` while another `down` removes NAME first: exit 0 (down of a gone cluster is success, as
the README says), not "not torn down: NAME" (exit 2), which was for clusters spared as a managed job's."""
from __future__ import annotations

from click.testing import CliRunner

from skybroker.commands import cluster as C


class RacedApi:
    """Before the down: the cluster exists; the down finds it gone (another down won); after: gone."""

    def __init__(self, spared: bool):
        self.spared, self.downs = spared, 0

    def cluster_exists(self, name):
        return self.downs == 0 or self.spared

    def down(self, names, on_event=None):
        self.downs += 1
        on_event("skip", f"cluster {names[0]} does not exist (already down)")
        return []


def _down(monkeypatch, api):
    monkeypatch.setattr(C, "use_api", lambda: api)
    return CliRunner().invoke(C.down, ["q1", "-y"])


def test_a_cluster_another_down_removed_meanwhile_is_success(monkeypatch):
    r = _down(monkeypatch, RacedApi(spared=False))
    assert r.exit_code == 0 and r.exception is None, (r.output, r.exception)


def test_a_cluster_left_up_is_still_reported(monkeypatch):
    from skybroker.errors import UsageError

    r = _down(monkeypatch, RacedApi(spared=True))  # the CLI's central handler makes it exit 2
    assert isinstance(r.exception, UsageError) and "not torn down: q1" in r.exception.message, r.output
