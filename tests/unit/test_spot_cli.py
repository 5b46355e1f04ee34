"""`broker simulate` (the click command object) end to end on small inputs."""
import csv
import io
import json

import pytest
from click.testing import CliRunner

from skybroker.errors import BrokerError, UsageError
from skybroker.spot.cli import catalog_prices, simulate
from tests.conftest import cli_runner


def _trace(tmp_path, data, gap=600, name="t.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"metadata": {"gap_seconds": gap}, "data": data}))
    return str(p)


def _pattern(n):
    # 3 hours up, 1 hour down, repeated
    return [1 if (i // 6) % 4 != 3 else 0 for i in range(n)]


def test_json_output(tmp_path):
    a = _trace(tmp_path, _pattern(600), name="a.json")
    b = _trace(tmp_path, _pattern(700)[::-1], name="b.json")
    r = CliRunner().invoke(simulate, ["--trace", a, b, "--task-hours", "10", "--deadline-hours", "14",
                                      "--starts", "7", "--seed", "3", "--workers", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    names = [s["policy"] for s in out["summary"]]
    assert names == ["greedy", "uniform_progress", "slack_aware", "mdp", "omniscient", "on_demand"]
    assert len(out["rows"]) == 2 * 7 * 6
    by = {s["policy"]: s for s in out["summary"]}
    assert by["on_demand"]["mean_norm_cost"] == pytest.approx(1.0)
    assert by["omniscient"]["mean_gap"] == pytest.approx(0.0)
    for s in out["summary"]:
        assert s["deadline_met"] == 1.0
        assert s["mean_gap"] >= -1e-12
        assert s["spot_hours"] + s["od_hours"] == pytest.approx(10.0)
    assert out["settings"]["on_demand_price"] == 3.06


def test_csv_and_policy_selection(tmp_path):
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--policy", "greedy,omniscient", "--task-hours", "5",
                                      "--deadline-hours", "8", "--starts", "4", "--csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert {row["policy"] for row in rows} == {"greedy", "omniscient"}
    assert len(rows) == 8
    assert all(float(row["gap"]) >= -1e-12 for row in rows)


def test_table_output(tmp_path):
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--starts", "3"])
    assert r.exit_code == 0, r.output
    assert "uniform_progress" in r.output and "omniscient" in r.output and "gap" in r.output


@pytest.mark.parametrize("args, needle", [
    (["--trace", "/nonexistent/x.json"], "not found"),
    (["--policy", "bogus"], "unknown policy"),
    (["--deadline-hours", "3"], "shorter than the task"),
    (["--deadline-hours", "1000"], "no trace is long enough"),
    (["--region", "us-east-1"], "need --instance"),
])
def test_bad_input_is_a_usage_error(tmp_path, args, needle):
    a = _trace(tmp_path, _pattern(100))
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--starts", "2", *args])
    assert isinstance(r.exception, UsageError), r.output
    assert needle in r.exception.message
    assert r.exception.exit_code == 2


def test_prices_from_the_catalog(tmp_path):
    try:
        od, sp, where = catalog_prices("p3.2xlarge")
    except BrokerError as e:  # the catalogs are another part of the project
        pytest.skip(f"catalog not available: {e}")
    assert od == pytest.approx(3.06)
    assert 0 < sp < od and where.startswith("aws")
    od_r, sp_r, _ = catalog_prices("p3.2xlarge", "aws", "us-west-2")
    assert od_r == pytest.approx(3.06) and sp_r >= sp
    with pytest.raises(UsageError, match="unknown instance type"):
        catalog_prices("no-such-type.42xlarge")
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--starts", "2", "--instance", "p3.2xlarge", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["settings"]["spot_price"] == pytest.approx(sp)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    a = _trace(tmp_path, _pattern(400))
    png = tmp_path / "s.png"
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--starts", "2", "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("where, needle", [
    ("nodir/p.png", "the folder {tmp}/nodir does not exist"),
    ("p.txt", "matplotlib cannot write '.txt' files"),
    ("", "is a folder"),  # tmp_path itself
])
def test_bad_plot_path_is_a_usage_error_before_the_simulation(tmp_path, monkeypatch, where, needle):
    pytest.importorskip("matplotlib")
    from skybroker.spot import experiment

    def never(*a, **kw):
        raise AssertionError("the simulation ran")

    monkeypatch.setattr(experiment, "run", never)
    a = _trace(tmp_path, _pattern(400))
    path = str(tmp_path / where) if where else str(tmp_path)
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--starts", "2", "--plot", path])
    assert isinstance(r.exception, UsageError), r.exception
    assert "--plot" in r.exception.message and needle.format(tmp=tmp_path) in r.exception.message
    assert not list(tmp_path.glob("*.png"))


def test_plot_without_suffix_writes_png_and_says_so(tmp_path):
    pytest.importorskip("matplotlib")
    a = _trace(tmp_path, _pattern(400))
    r = cli_runner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                       "--starts", "2", "--plot", str(tmp_path / "noext"), "--json"])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'noext.png'}\n" in r.stderr
    assert (tmp_path / "noext.png").read_bytes()[:4] == b"\x89PNG"


def test_negative_seed_is_a_usage_error(tmp_path):
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--seed", "-1"])
    assert r.exit_code == 2 and "--seed" in r.output and "Traceback" not in r.output


def test_plot_without_matplotlib_is_a_usage_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--task-hours", "5", "--deadline-hours", "8",
                                      "--starts", "2", "--plot", str(tmp_path / "x.png"), "--json"])
    assert isinstance(r.exception, UsageError) and "matplotlib" in r.exception.message


@pytest.mark.parametrize("args, needles", [
    # the first start pays the restart overhead d: R >= C + d, not only R >= C
    (["--task-hours", "5", "--deadline-hours", "5.1"], ["--deadline-hours 5.1", "--overhead-hours", ">= 5.2"]),
    (["--task-hours", "5", "--deadline-hours", "5.5", "--overhead-hours", "0.6"], [">= 5.6"]),
    # the deadline is rounded down to the trace's ticks (600 s here): 5.2 h is 31 ticks, C + d needs 32
    (["--task-hours", "5", "--deadline-hours", "5.2"], ["600 s ticks", ">= 5.33333"]),
    (["--task-hours", "5", "--deadline-hours", "5.1", "--multi-zone", "--zone-prices", "1"], [">= 5.2"]),
])
def test_a_deadline_below_compute_plus_overhead_is_a_usage_error(tmp_path, args, needles):
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--starts", "2", *args])
    assert isinstance(r.exception, UsageError), r.output
    text = r.exception.message + " " + (r.exception.hint or "")
    assert r.exception.exit_code == 2 and "no schedule can meet it" in text
    for n in needles:
        assert n in text, text


def test_the_smallest_feasible_deadline_runs(tmp_path):
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--starts", "2", "--task-hours", "5", "--deadline-hours",
                                      "5.3334", "--json", "--policy", "greedy,omniscient"])
    assert r.exit_code == 0, r.output
    assert all(s["deadline_met"] == 1.0 for s in json.loads(r.output)["summary"])


def test_json_never_has_nan_or_infinity(tmp_path, monkeypatch):
    from skybroker.spot import experiment

    real = experiment.run

    def run(*a, **kw):
        res = real(*a, **kw)
        res.summary[0]["mean_gap"] = float("nan")
        res.summary[0]["mean_norm_cost"] = float("inf")
        return res

    monkeypatch.setattr(experiment, "run", run)
    a = _trace(tmp_path, _pattern(400))
    r = CliRunner().invoke(simulate, ["--trace", a, "--starts", "2", "--task-hours", "5", "--deadline-hours", "8",
                                      "--json", "--policy", "greedy"])
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.output and "Infinity" not in r.output
    first = json.loads(r.output)["summary"][0]
    assert first["mean_gap"] is None and first["mean_norm_cost"] is None


def test_print_json_writes_null_for_nan(capsys):
    from skybroker import render

    render.print_json({"a": float("nan"), "b": [1.5, float("-inf")], "c": (float("inf"),)})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.5, None], "c": [None]}
