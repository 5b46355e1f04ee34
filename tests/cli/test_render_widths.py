"""Every table at 60, 80 and 120 columns (a rich Console of that width, as a terminal): nothing cropped
silently. Key values are present in full (numbers keep every digit), a hidden column is named in the
footer, no line is wider than the terminal; and the pipe path prints every column in full."""
from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from skybroker import api, render
from skybroker.backend_jobs import JobStatus, NodeJob
from skybroker.check import CloudCheck
from skybroker.commands.options import build_overrides
from skybroker.jobs.store import ManagedJob
from skybroker.state import ClusterRecord, NodeRecord

WIDTHS = (60, 80, 120)
PRICE = re.compile(r"\d+\.\d{4}")


@pytest.fixture
def screen():
    """screen(width) -> a function returning what was printed so far (stdout and stderr together)."""
    bufs = []

    def make(width: int):
        buf = io.StringIO()
        render.set_consoles(Console(file=buf, width=width, force_terminal=True, color_system=None,
                                    highlight=False, legacy_windows=False))
        bufs.append(buf)
        return buf.getvalue

    yield make
    render.set_consoles(None)


def _check_screen(text: str, width: int, must: list[str]) -> None:
    for line in text.splitlines():
        assert len(line) <= width, f"line wider than {width}: {line!r}"
    for value in must:
        assert value in text, f"{value!r} missing at {width} columns:\n{text}"
    m = re.search(r"hidden at (\d+) columns: ([^;]+);", text.replace("\n", " "))
    if m:
        assert int(m.group(1)) == width
        header = text.splitlines()
        for col in m.group(2).strip().split(", "):
            assert not any(re.search(rf"(^|\s){re.escape(col)}(\s|$)", h) for h in header[:8]
                           if "hidden" not in h), f"{col} is said hidden but shown"


def _prices_whole(text: str) -> None:
    """A number is printed whole: no token made of digits is shortened with an ellipsis."""
    bad = [t for t in text.split() if "…" in t and re.fullmatch(r"[\d.…*%$]+", t)]
    assert not bad, text


# ----------------------------------------------------------------------------------------------------
def _plan(path, nodes=None):
    task = api.load_task(path, build_overrides({"num_nodes": nodes}))
    return api.plan(task), task.name


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_two_nodes(screen, width):
    plan, name = _plan("examples/a100x8.yaml", 2)
    out = screen(width)
    render.print_plan(plan, name)
    text = out()
    _check_screen(text, width, ["Considered resources", "CHOSEN", "✔", "A100:8", "H100:8", "19.4217", "38.8434",
                                "$/h total", "$/h/node", "a2-highgpu-8g", "110.0800", "196.6400"])
    _prices_whole(text)
    if width >= 120:
        assert "hidden" not in text and "ZONE" in text and "MEM(GB)" in text
    else:
        assert f"hidden at {width} columns: ZONE" in text.replace("\n", " ")


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_one_node(screen, width):
    plan, name = _plan("examples/v100.yaml")
    out = screen(width)
    render.print_plan(plan, name)
    text = out()
    _check_screen(text, width, ["V100:1", "2.9532", "3.0600", "✔", "CHOSEN", "n1-highmem-8", "p3.2xlarge",
                                "gcp (us-central1)", "aws (us-east-1)", "azure (eastus)"])
    _prices_whole(text)


def _clusters():
    now = time.time()
    mk = lambda n, c, r, z, it, acc, spot, nn, price, st, age, auto, down: ClusterRecord(  # noqa: E731
        n, c, r, z, it, acc, spot, nn, price, st, now - age, autostop_minutes=auto, autostop_down=down,
        autostop_where=("node" if c == "gcp" else "local") if auto is not None else None, nodes=[NodeRecord(f"i-{k}", k, f"127.0.0.{k + 1}") for k in range(nn)])
    return [mk("train-a100-8x-experiment-42", "gcp", "us-central1", "us-central1-a", "a2-highgpu-8g", "A100:8",
               False, 2, 58.7752, "UP", 3 * 3600, 30, True),
            mk("dev", "aws", "us-east-1", "use1-az1", "p3.2xlarge", "V100:1", True, 1, 0.9731, "UP", 600, None, False),
            mk("cpu-batch", "azure", "eastus", None, "Standard_D8s_v5", None, False, 4, 1.536, "STOPPED", 2 * 86400,
               60, False)]


COSTS = {"train-a100-8x-experiment-42": 176.3256, "dev": 0.4866, "cpu-batch": 2345.6789}


@pytest.mark.parametrize("width", WIDTHS)
def test_status(screen, width):
    out = screen(width)
    render.print_clusters(_clusters(), COSTS, stopped_hourly={"cpu-batch": 0.0173})
    text = out()
    must = ["NAME", "STATUS", "dev", "cpu-batch", "STOPPED", "UP", "train-a", "-42"]
    if width >= 80:  # the cost so far (from the ledger); $/h: running price, or a stopped cluster's disks
        must += ["COST ($)", "176.3256", "0.4866", "2345.6789", "58.7752", "0.9731", "0.0173"]
        assert "1.5360" not in text  # the stopped cluster's running price is not what it is billed
    if width >= 120:
        # every column, with the autostop time, whether it tears down, and who enforces it (the cluster or
        # this machine); RESOURCES gives way by an ellipsis in the middle (both ends survive)
        must += ["train-a100-8", "periment-42", "a2-highg", "A100:8)", "p3.2xlar", "1) spot", "NODES",
                 "AUTOSTOP", "30m down, node", "60m local", "LAUNCHED"]
    _check_screen(text, width, must)
    _prices_whole(text)


@pytest.mark.parametrize("width", WIDTHS)
def test_queue(screen, width):
    jobs = [JobStatus(1, "train", "SUCCEEDED", 0, (NodeJob(0, "SUCCEEDED", 0), NodeJob(1, "SUCCEEDED", 0)),
                      time.time() - 60),
            JobStatus(2, "a-rather-long-job-name-for-a-queue", "FAILED", 3,
                      (NodeJob(0, "FAILED", 3), NodeJob(1, "CANCELLED")), time.time() - 30),
            JobStatus(12345, None, "RUNNING", None, (NodeJob(0, "RUNNING"),), time.time())]
    out = screen(width)
    render.print_jobs(jobs, "dev")
    text = out()
    _check_screen(text, width, ["Jobs on dev", "ID", "STATUS", "EXIT", "SUCCEEDED", "FAILED", "RUNNING", "12345",
                                "train", "-for-a-queue"[-6:]])


@pytest.mark.parametrize("width", WIDTHS)
def test_managed_queue(screen, width):
    now = time.time()
    jobs = [ManagedJob(1, "sleeper", "{}", None, "8x[A100:8] spot", "RUNNING", now - 600, now - 500, None,
                       cluster="job-1", recoveries=2, cost=12.5, place="gcp/us-central1/us-central1-a"),
            ManagedJob(22, "eval", "{}", None, "1x[cpus=4+]", "SUCCEEDED", now - 9000, now - 8900, now - 100,
                       cost=0.1234, place="aws/us-east-1/use1-az1")]
    out = screen(width)
    render.print_managed(jobs, {1: 12.5, 22: 0.1234})  # job id → cost from the ledger
    text = out()
    _check_screen(text, width, ["Managed jobs", "ID", "STATUS", "COST ($)", "RUNNING", "SUCCEEDED", "12.5000",
                                "0.1234", "sleeper", "22"])
    _prices_whole(text)


@pytest.mark.parametrize("width", WIDTHS)
def test_cost_report(screen, width, ledger_now):
    rep = api.cost_report()
    out = screen(width)
    render.print_cost_report(rep)
    text = out()
    _check_screen(text, width, ["Clusters", "Managed jobs", "COST ($)", "gone", "parked", "train", "STOPPED",
                                "SUCCEEDED", "0.3000", "0.3590", "0.3880", "Total: $1.0470"])
    _prices_whole(text)
    if width >= 120:
        assert "hidden" not in text and "SAVED ($)" in text and "VS ALWAYS-OD" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_show_gpus(screen, width):
    rows = api.show_gpus("A100")
    out = screen(width)
    render.print_gpus(rows, "A100")
    text = out()
    _check_screen(text, width, ["GPU", "COUNT", "CLOUD", "ON-DEMAND", "SPOT", "A100", "16", "p4d.24xlarge",
                                "21.9576", "5.1643", "35.5024"])
    _prices_whole(text)
    assert "A10 " not in text.replace("A100", "")


@pytest.mark.parametrize("width", WIDTHS)
def test_show_gpus_spot(screen, width):
    rows = api.show_gpus("V100", spot=True)
    out = screen(width)
    render.print_gpus(rows, "V100", spot_only=True)
    text = out()
    _check_screen(text, width, ["SPOT", "V100", "0.3548"])


def _sim():
    pols = [("greedy", 0.5123), ("uniform_progress", 0.4567), ("slack_aware", 0.4321), ("omniscient", 0.3876),
            ("on_demand", 1.0)]
    summary = [{"policy": p, "mean_norm_cost": c, "p25_norm_cost": c - 0.1, "p75_norm_cost": c + 0.1,
                "spot_hours": 35.5, "od_hours": 12.5, "deadline_met": 1.0, "mean_gap": c - 0.3876,
                "p25_gap": 0.0012, "p75_gap": 0.2318} for p, c in pols]
    res = SimpleNamespace(summary=summary, samples_per_trace={"us-west-2a_v100_1": 300}, skipped={})
    meta = {"task_hours": 48, "deadline_hours": 60, "overhead_hours": 0.2, "on_demand_price": 3.06,
            "spot_price": 0.9731, "prices_from": "paper", "omniscient_cpu_seconds": 2.5}
    return res, meta


@pytest.mark.parametrize("width", WIDTHS)
def test_simulate(screen, width):
    res, meta = _sim()
    out = screen(width)
    render.print_simulation(res, meta)
    text = out()
    _check_screen(text, width, ["policy", "cost", "gap", "uniform_progress", "slack_aware", "0.5123", "0.4567",
                                "1.0000", "0.1247", "100%", "spot h", "35.5"])
    _prices_whole(text)


@pytest.mark.parametrize("width", WIDTHS)
def test_check(screen, width):
    checks = [CloudCheck("aws", False, "access key from environment (AWS_ACCESS_KEY_ID), but boto3 is not installed "
                                       "(missing boto3, botocore)", "pip install 'skybroker[aws]'", True, False, "aws"),
              CloudCheck("gcp", True, "service account file /tmp/sa.json, project proj-1", None, True, True, "gcp"),
              CloudCheck("azure", False, "no Azure credentials", "run `az login` or set AZURE_CLIENT_ID, "
                         "AZURE_TENANT_ID and AZURE_CLIENT_SECRET", False, True, "azure")]
    out = screen(width)
    render.print_checks(checks)
    text = out()
    _check_screen(text, width, ["aws", "gcp", "azure", "local", "✔", "✘", "pip install 'skybroker[aws]'",
                                "proj-1", "az login"])


def test_pipe_path_prints_every_column_in_full(capsys):
    render.set_consoles(None)
    plan, name = _plan("examples/a100x8.yaml", 2)
    render.print_plan(plan, name)
    render.print_clusters(_clusters(), COSTS)
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "…" not in out and "hidden" not in out
    for col in ("INFRA", "ZONE", "INSTANCE", "vCPUs", "MEM(GB)", "GPUs", "MARKET", "$/h/node", "$/h total", "CHOSEN",
                "NODES", "LAUNCHED", "AUTOSTOP", "COST ($)"):
        assert col in out, col
    assert "train-a100-8x-experiment-42" in out and "europe-west4-a" in out


def test_fit_drops_in_declared_order_then_shortens_names():
    cols = [render.Col("NAME", soft=8, min=4), render.Col("A", "right"), render.Col("B", "right"), render.Col("C")]
    rows = [["a-very-long-name-1", "12345.6789", "2", "ccc"], ["a-very-long-name-2", "1", "22", "c"]]
    lay = render.fit(cols, rows, 200, drop=("B", "C"))
    assert lay.hidden == [] and lay.widths[0] == 18
    lay = render.fit(cols, rows, 29, drop=("B", "C"))  # shortening NAME to 8 fits: nothing dropped
    assert lay.hidden == [] and lay.widths[0] == 8 and lay.widths[1] == 10
    lay = render.fit(cols, rows, 25, drop=("B", "C"))
    assert lay.hidden == ["B"] and lay.widths[1] == 10  # a number keeps its width
    lay = render.fit(cols, rows, 20, drop=("B", "C"))
    assert lay.hidden == ["B", "C"] and lay.widths[1] == 10
    lay = render.fit(cols, rows, 18, drop=("B", "C"))  # then names go below their soft width
    assert lay.hidden == ["B", "C"] and lay.widths[0] == 6
    assert render.fit(cols, rows, 8, drop=("B", "C")) is None  # cannot fit: the caller stacks the rows
    assert render._shorten("a-very-long-name-1", 8) == "a-ve…e-1"
    assert render._shorten("a-very-long-name-2", 8) != render._shorten("a-very-long-name-1", 8)


def test_very_narrow_terminal_stacks_rows(screen):
    out = screen(30)
    render.print_clusters(_clusters())
    text = out()
    assert "NAME: train-a100-8x-experiment-42" in text.replace("\n", " ") or "train-a100-8x" in text


# ----------------------------------------------------------------------------------------------------
def _strip(s: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", s).replace("\r", "\n")


def test_progress_on_a_terminal_marks_steps_with_elapsed_time():
    buf = io.StringIO()
    render.set_consoles(Console(file=buf, width=80, force_terminal=True, color_system=None))
    try:
        p = render.Progress()
        with p:
            p.event("provision", "provisioning 1× p3.2xlarge on aws/us-east-1/use1-az1")
            p.event("failover", "CapacityError on aws/us-east-1/use1-az1; blocking it and re-planning")
            p.event("provision", "provisioning 1× p3.2xlarge on aws/us-east-1/use1-az2")
            p.event("wait", "waiting for 1 node(s) to accept commands")
            p.event("a-kind-from-the-future", "something new happened")
            p.event("sync", "syncing workdir and file mounts to every node")
            render.LinePrinter(progress=p).line(0, "hello")
    finally:
        render.set_consoles(None)
    text = _strip(buf.getvalue())
    assert re.search(r"✘ provisioning 1× p3\.2xlarge on aws/us-east-1/use1-az1 \(\d+\.\ds\)", text), text
    assert re.search(r"✔ provisioning 1× p3\.2xlarge on aws/us-east-1/use1-az2 \(\d+\.\ds\)", text), text
    assert re.search(r"✔ waiting for 1 node\(s\) to accept commands \(\d+\.\ds\)", text), text
    assert "› something new happened" in text and "› CapacityError" in text
    assert re.search(r"✔ syncing workdir and file mounts to every node \(\d+\.\ds\)", text), text
    assert render._Live.current is None


def test_progress_in_a_pipe_is_one_line_per_step(capsys):
    render.set_consoles(None)
    p = render.Progress()
    with p:
        p.event("provision", "provisioning 2× local on local")
        p.event("mystery", "an unknown kind")
        p.update(3, 10)
    err = capsys.readouterr().err
    assert err == "› provisioning 2× local on local\n› an unknown kind\n"


def test_progress_bar_for_a_step_with_a_total():
    buf = io.StringIO()
    render.set_consoles(Console(file=buf, width=80, force_terminal=True, color_system=None))
    try:
        p = render.Progress()
        with p:
            p.event("simulate", "simulating 1 trace(s) × 300 starts × 5 policies")
            p.update(150, 300)
            assert "150/300" in _render_text(render._Live.current)
    finally:
        render.set_consoles(None)
    assert "✔ simulating 1 trace(s)" in _strip(buf.getvalue())


def _render_text(live) -> str:
    b = io.StringIO()
    Console(file=b, width=80, color_system=None).print(live._render())
    return b.getvalue()
