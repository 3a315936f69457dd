"""Misuse is refused where it happens, with the documented error type and a message that
names the argument and its value, before anything changes: every row of
``configs.ERRORS`` (wrong checkpoints: ``configs.LOAD_ERRORS`` in test_checkpoint.py)."""

import copy

import pytest
import torch
from torch import nn

from alice import Alice, ClosureError, LoopError
from configs import ERRORS, error_id
from helpers import all_equal, copies, quadratic, same_state


@pytest.mark.parametrize("case", ERRORS, ids=error_id)
def test_misuse_is_refused_where_it_is_given_and_changes_nothing(case):
    p = nn.Parameter(torch.zeros(2))
    if case.at == "construction":
        with pytest.raises(case.error, match=case.regex):
            Alice([p], **case.kwargs)
    elif case.at == "add_param_group":
        opt = Alice([p])
        with pytest.raises(case.error, match=case.regex):
            opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], **case.kwargs})
        assert len(opt.param_groups) == 1
    else:  # "step"
        model, x, y = quadratic()
        opt = Alice(model.parameters(), seed=0, **case.kwargs)
        before, state = copies(model), copy.deepcopy(opt.state_dict()["state"])
        with pytest.raises(case.error, match=case.regex):
            case.call(opt, model, x, y)
        assert all_equal(before, model.parameters()) and (opt.steps, opt.calls) == (0, 0)
        assert same_state(state, opt.state_dict()["state"])


def test_closure_and_loop_errors_are_runtime_errors_apart_from_bad_arguments():
    """docs/architecture.md#errors: one type per kind of misuse; ``except ValueError``
    (bad arguments) catches neither."""
    for error in (ClosureError, LoopError):
        assert issubclass(error, RuntimeError) and not issubclass(error, (ValueError, TypeError))
    assert not issubclass(ClosureError, LoopError) and not issubclass(LoopError, ClosureError)
