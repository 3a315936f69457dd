"""The command line on bad input: one line on stderr, exit code 2 (130 when interrupted), no traceback,
and nothing already written lost."""

import json
import subprocess
import sys
import os
from pathlib import Path

import pytest

import alice
from alice.cli import main
from alice.harness import optimizers


def _fails(argv, capsys, code=2):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("spec, key", [("alice,bogus=1", "bogus"), ("adam,betaz=0.1", "betaz"),
                                       ("torch.optim:RMSprop,lr=1e-3,alph=0.9", "alph")])
def test_unknown_optimizer_key_fails_before_any_folder(tmp_path, capsys, spec, key):
    out = tmp_path / "out"
    err = _fails(["compare", "--optimizer", spec, "--out", str(out), "--no-progress", "--steps", "2"], capsys)
    assert "--optimizer" in err and repr(key) in err
    assert not out.exists()


@pytest.mark.parametrize("spec, says", [
    ("adam,betas=(0.9", "betas=(0.9 is not a Python literal"),         # an unclosed tuple
    ("adam,betas=(2.0,0.9)", "Invalid beta parameter at index 0: 2.0"),  # refused by torch's constructor
    ("sgd,momentum=-1", "Invalid momentum value: -1"),
    ("alice,hess_comp=bogus", "Invalid hess_comp: 'bogus'"),               # refused by Alice's constructor
])
def test_bad_optimizer_value_fails_before_any_folder(tmp_path, capsys, spec, says):
    out = tmp_path / "out"
    err = _fails(["compare", "--optimizer", spec, "--out", str(out), "--no-progress", "--steps", "2"], capsys)
    assert err.startswith(f"alice: error: Invalid --optimizer {spec!r}: ") and says in err, err
    assert not out.exists()


def test_tuple_values_parse_to_tuples():
    choice = optimizers.parse("adam,betas=(0.9,0.99),eps=1e-7")
    assert choice.kwargs == {"betas": (0.9, 0.99), "eps": 1e-7}
    assert optimizers.parse("alice,betas=[0.9, 0.99]").kwargs == {"betas": [0.9, 0.99]}


@pytest.mark.parametrize("below", ["", "sub/dir"])
def test_out_that_is_a_file_is_refused(tmp_path, capsys, below):
    file = tmp_path / "file.txt"
    file.write_text("keep me")
    out = file / below if below else file
    err = _fails(["compare", "--out", str(out), "--no-progress", "--steps", "2"], capsys)
    assert "--out" in err
    assert file.read_text() == "keep me"


ROW = '{"run": "a", "attempt": "1", "step": 0}'


@pytest.mark.parametrize("line", ["42", "[1, 2]", "null", '{"a": 1}', '"text"'])
@pytest.mark.parametrize("command", ["report", "compare"])
def test_results_line_that_is_not_a_row(tmp_path, capsys, line, command):
    out = tmp_path / "out"
    out.mkdir()
    results = out / "results.jsonl"
    results.write_text(f"{ROW}\n{line}\n")
    before = results.read_bytes()
    argv = ["report", "--out", str(out)] if command == "report" else \
        ["compare", "--optimizer", "adam", "--steps", "2", "--seeds", "1", "--out", str(out), "--no-progress"]
    err = _fails(argv, capsys)
    assert str(results) in err and "line 2" in err
    assert results.read_bytes() == before


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"alice {alice.__version__}"


def test_version_from_a_subprocess():
    src = str(Path(alice.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "alice", "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == f"alice {alice.__version__}"


def test_interrupted_compare_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from alice.harness import runner

    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "compare", interrupted)
    out = tmp_path / "out"
    assert main(["compare", "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted" in err and "rerun the same command to resume" in err


def test_interrupted_compare_keeps_finished_runs_and_resumes(tmp_path, capsys, monkeypatch):
    from alice.harness import runner

    out = tmp_path / "out"
    argv = ["compare", "--task", "digits-mlp", "--optimizer", "adam", "--seeds", "2", "--steps", "3", "--eval-every", "1",
            "--out", str(out), "--no-progress"]
    real_train, calls = runner.train, []

    def train(run, *args, **kwargs):
        if run.eval_every == 1:  # a timed run, not the warm-up (which evaluates only at its end)
            calls.append(run.seed)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_train(run, *args, **kwargs)

    monkeypatch.setattr(runner, "train", train)
    assert main(argv) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["seed"] for row in rows if row["done"]} == {0}
    monkeypatch.setattr(runner, "train", real_train)
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(row["seed"] for row in rows if row["done"]) == [0, 1]


def test_tuple_value_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--task", "digits-mlp", "--optimizer", "adam,betas=(0.9,0.99)", "--seeds", "1",
                 "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["optimizer"] for row in rows} == {"adam,betas=(0.9, 0.99)"}


def test_resume_counts_only_what_remains(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--task", "digits-mlp", "--optimizer", "adam", "--steps", "3", "--out", str(out)]
    assert main([*argv, "--seeds", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*argv, "--seeds", "3"]) == 0  # seeds 0 and 1 are in results.jsonl: one run of 3 steps is left
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert " 3/3 " in bar and "2 runs already done" in bar, bar
