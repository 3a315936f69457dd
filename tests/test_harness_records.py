"""The results file: durable appends, torn last lines, finished attempts only."""

import json

import pytest

from alice.harness import records


def test_torn_line_is_skipped_and_the_next_row_starts_clean(tmp_path):
    path = tmp_path / "r.jsonl"
    writer = records.Writer(path)
    writer.write(dict(run="a", attempt="1", step=0, done=False))
    with open(path, "a") as f:
        f.write('{"run": "a", "attem')  # a crash in the middle of a write
    records.Writer(path).write(dict(run="a", attempt="2", step=0, done=True))
    with pytest.warns(UserWarning, match="skipped 1 incomplete line"):
        rows = records.read_rows(path)
    assert [r["attempt"] for r in rows] == ["1", "2"]
    assert path.read_text().startswith(json.dumps(dict(run="a", attempt="1", step=0, done=False),
                                                  separators=(",", ":")))


def test_only_finished_attempts_count():
    rows = [dict(run="a", attempt="1", step=0), dict(run="a", attempt="2", step=10, done=True),
            dict(run="a", attempt="2", step=0), dict(run="b", attempt="3", step=0)]
    finished = records.finished_runs(rows)
    assert list(finished) == ["a"] and [r["step"] for r in finished["a"]] == [0, 10]
