"""Trace loading: format validation with clear errors, node counts, windows."""
import json

import numpy as np
import pytest

from skybroker.errors import UsageError
from skybroker.spot import traces as tr


def _write(tmp_path, obj, name="t.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_load_valid_trace(tmp_path):
    p = _write(tmp_path, {"metadata": {"gap_seconds": 600}, "data": [1, 0, 1, 1]})
    t = tr.load_trace(p)
    assert t.gap_seconds == 600
    assert t.counts.tolist() == [1, 0, 1, 1]
    assert t.availability().tolist() == [True, False, True, True]
    assert t.hours == pytest.approx(4 * 600 / 3600)
    assert len(t.head(600 * 2 / 86400)) == 2


@pytest.mark.parametrize("content, needle", [
    ("not json", "not valid JSON"),
    ({"data": [1]}, "'metadata' and 'data'"),
    ({"metadata": {"gap_seconds": -5}, "data": [1]}, "gap_seconds"),
    ({"metadata": {"gap_seconds": "600"}, "data": [1]}, "gap_seconds"),
    ({"metadata": {"gap_seconds": 600}, "data": []}, "non-empty"),
    ({"metadata": {"gap_seconds": 600}, "data": [1, 0.5]}, "data[1]"),
    ({"metadata": {"gap_seconds": 600}, "data": [1, -1]}, "data[1]"),
    ([1, 2, 3], "'metadata' and 'data'"),
])
def test_garbage_traces_raise_usage_error(tmp_path, content, needle):
    p = _write(tmp_path, content)
    with pytest.raises(UsageError) as e:
        tr.load_trace(p)
    assert needle in e.value.message
    assert e.value.exit_code == 2 and e.value.hint


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        tr.load_trace(tmp_path / "nope.json")
    with pytest.raises(UsageError, match="directory"):
        tr.load_trace(tmp_path)


def test_binary_file(tmp_path):
    p = tmp_path / "b.json"
    p.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UsageError):
        tr.load_trace(p)


def test_multi_node_availability_needs_full_gang(tmp_path):
    d = tmp_path / "availability" / "16-node" / "x"
    d.mkdir(parents=True)
    p = _write(d, {"metadata": {"gap_seconds": 300}, "data": [16, 15, 3, 16, 0]})
    assert tr.infer_nodes(p) == 16
    assert tr.infer_nodes(tmp_path / "1-node" / "a.json") == 1
    assert tr.infer_nodes(tmp_path / "plain.json") == 1
    t = tr.load_trace(p)
    assert t.availability(16).tolist() == [True, False, False, True, False]
    assert t.availability(3).tolist() == [True, True, True, True, False]


def test_shared_traces_load():
    root = tr.default_traces_root()
    if not root.exists():
        pytest.skip(f"no spot traces at {root}")
    files = tr.find_traces(root, "**/*.json")
    assert len(files) == 25
    for f in files:
        t = tr.load_trace(f)
        assert t.gap_seconds in (30, 32, 34, 300, 600)
        assert t.counts.min() >= 0
    two_week = tr.load_trace(root / "availability/1-node/aws-10-26-2022/us-west-2a_k80_1.json")
    assert len(two_week) == 3895 and len(two_week.head(13)) == 13 * 144
    # README: fraction of ticks available in the first 13 days
    assert np.mean(two_week.head(13).availability()) == pytest.approx(0.935, abs=0.001)


def test_week_clock_from_the_start_date_in_the_path(tmp_path):
    # 2022-10-26 was a Wednesday: 2 days after Monday 00:00; the files carry no time of day
    assert tr.week_clock("availability/1-node/aws-10-26-2022/us-west-2a_k80_1.json") == 2 * 86400
    assert tr.week_clock("preemption/4-node/aws-08-03-2023/x.json") == 3 * 86400  # a Thursday
    assert tr.week_clock(tmp_path / "plain.json") is None
    assert tr.week_clock("aws-13-45-2023/x.json") is None  # not a date
    d = tmp_path / "aws-10-26-2022"
    d.mkdir()
    t = tr.load_trace(_write(d, {"metadata": {"gap_seconds": 43200}, "data": [1] * 30}))
    assert t.t0_s == 2 * 86400 and t.head(5).t0_s == 2 * 86400
    s = t.slice_days(6, 14)  # Tuesday: the clock wraps to the next week
    assert len(s) == 16 and s.t0_s == 1 * 86400 and s.name.endswith("[d6-14]")
