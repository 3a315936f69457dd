"""The ``alice`` command line: subcommands, listings, clear errors."""

import re

import pytest

from alice.cli import main


def test_without_command_prints_usage(capsys):
    assert main([]) == 2
    assert re.search(r"usage: alice .*compare", capsys.readouterr().out, re.S)


def test_tasks_and_optimizers_are_listed(capsys):
    assert main(["tasks"]) == 0 and main(["optimizers"]) == 0
    out = capsys.readouterr().out
    for name in ("digits-mlp", "mnist-mlp", "mnist-cnn", "charlm", "logreg", "cifar10-resnet18",
                 "alice-glass_rms", "adahessian", "sophia", "module:Class"):
        assert name in out


def test_compare_writes_report_and_says_where(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["compare", "--task", "digits-mlp", "--optimizer", "adam", "--seeds", "2", "--steps", "3",
                 "--out", str(out), "--no-progress"]) == 0
    assert f"Report: {out / 'report.md'}" in capsys.readouterr().out
    assert "alice compare --task digits-mlp --optimizer adam" in (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", "--out", str(out)]) == 0 and (out / "report.md").exists()


@pytest.mark.parametrize("argv, message", [
    (["compare", "--task", "nope"], r"error: Invalid --task: 'nope' \(valid: digits-mlp"),
    (["compare", "--steps", "0"], "--steps: must be >= 1"),
    (["compare", "--optimizer", "adamax"], r"Invalid --optimizer: 'adamax' \(valid: alice"),
    (["report", "--out", "/nonexistent/alice"], "no finished runs"),
])
def test_bad_options_exit_with_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--no-progress"] if argv[0] == "compare" else argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_demo_is_the_readme_comparison(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default mnist-mlp" in text and "(default 2)" in text and "(default runs/demo)" in text
