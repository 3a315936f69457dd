"""Alice under torch.distributed on CPU: DDP and FSDP2 on 2 gloo processes follow one process.

Each 2-rank case spawns two processes (``torch.multiprocessing``, bounded in
time) that run a float64 model and save what they end with; the test compares
it with a single-process run on the whole batch. Two ranks average two
half-batch gradients where one process averages the whole batch, so the
trajectories agree to float64 rounding, not bit for bit; one rank (FSDP2 on a
world of one) agrees bit for bit.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from alice import Alice
from helpers import train, train_closure_free

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

WORLD = 2
STEPS = 12  # warm-up 2 steps, then sampling every 3rd: several sampling and quick steps
KWARGS = dict(lr=0.05, betas=(0.5, 0.9), quick_steps=2)
SEED = 1234
ROUNDING = dict(rtol=1e-9, atol=1e-12)  # two half-batch means vs one whole-batch mean
TIMEOUT_S = 60


# -- the problem, run the same way on any number of ranks ---------------------------------


def problem():
    """A float64 ReLU network (one layer has a single output row: on 2 ranks one shard is
    empty) and a batch of 16 rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randn(16, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    return model, x, y


def single(steps=STEPS, nan_at=None, seed=SEED):
    model, x, y = problem()
    opt = Alice(model.parameters(), seed=seed, **KWARGS)
    train(model, opt, x, y, steps, nan_at)
    return model, opt


def closure_free(model, x, y, calls):
    """The closure-free mode: the loop runs backward and calls ``step()`` (ends in eval mode)."""
    opt = Alice(model.parameters(), seed=SEED, closure_free=True, **KWARGS)
    train_closure_free(model, opt, x, y, calls)
    opt.eval()
    return opt


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def snapshot(model, opt):
    """Full parameters and state (gathered from the shards: every rank must call it)."""
    params = [full(p.detach()).clone() for p in model.parameters()]
    state = [{k: full(v).clone() for k, v in opt.state[p].items() if k in ("offset", "G", "V", "H", "R")}
             for p in model.parameters()]
    return {"params": params, "state": state, "seed": opt.seed, "calls": opt.calls,
            "skipped": opt.skipped_steps}


def assert_matches(got, model, opt, exact=False):
    expected = snapshot(model, opt)
    check = (lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0)) if exact else \
        functools.partial(torch.testing.assert_close, **ROUNDING)
    for a, b in zip(got["params"], expected["params"]):
        check(a, b)
    for sa, sb in zip(got["state"], expected["state"]):
        for key in sb:
            check(sa[key], sb[key])
    assert (got["calls"], got["skipped"]) == (expected["calls"], expected["skipped"])


# -- the workers (one process per rank) ----------------------------------------------------


def my_half(x, rank):
    return x.chunk(WORLD)[rank]


def shard(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # a CPU mesh: gloo ranks on the CPU, also on a machine with a GPU (whose mesh FSDP2 takes by default)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def case_ddp(rank, out: Path):
    """DDP with an explicit seed, each rank on half the batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, x, y = problem()
    ddp = DDP(model)
    opt = Alice(ddp.parameters(), seed=SEED, **KWARGS)
    train(ddp, opt, my_half(x, rank), my_half(y, rank), STEPS)
    return snapshot(model, opt)


def case_ddp_seeds(rank, out: Path):
    """Ranks that seed torch differently before building Alice agree on rank 0's seed; a
    NaN loss on rank 1 only makes both skip; explicit seeds that differ are refused."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, x, y = problem()
    ddp = DDP(model, gradient_as_bucket_view=True)  # p.grad is DDP's bucket: Alice copies from it
    torch.manual_seed(100 + rank)  # rank 0's draw is the seed: torch.manual_seed(100), one draw
    opt = Alice(ddp.parameters(), **KWARGS)
    refused = None
    try:
        Alice(ddp.parameters(), seed=rank, **KWARGS)
    except ValueError as err:
        refused = str(err)
    nan_at = 5 if rank == 1 else None
    train(ddp, opt, my_half(x, rank), my_half(y, rank), STEPS, nan_at=nan_at)
    return {**snapshot(model, opt), "refused": refused}


def case_fsdp(rank, out: Path):
    """FSDP2 on each layer and the root, each rank on half the batch; a NaN loss on rank 1
    only at step 7 (after a first check point at step 5)."""
    model, x, y = problem()
    shard(model)
    opt = Alice(model.parameters(), seed=SEED, **KWARGS)
    shapes = [(tuple(p.to_local().shape), tuple(opt.state[p]["G"].to_local().shape),
               opt.state[p]["G"].placements == p.placements) for p in model.parameters()]
    train(model, opt, my_half(x, rank), my_half(y, rank), 5)
    first = snapshot(model, opt)
    train(model, opt, my_half(x, rank), my_half(y, rank), STEPS - 5, nan_at=2 if rank == 1 else None)
    free_model = shard(problem()[0])
    free = closure_free(free_model, my_half(x, rank), my_half(y, rank), 20)
    return {**snapshot(model, opt), "first": first, "shapes": shapes, "free": snapshot(free_model, free)}


def _dcp_state(model, opt):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def _dcp_load(model, opt, path):
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _dcp_state(model, opt)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


def case_dcp_save(rank, out: Path):
    """FSDP2 on 2 ranks: 7 steps, a sharded DCP save, 5 more steps."""
    from torch.distributed import checkpoint as dcp

    model, x, y = problem()
    shard(model)
    opt = Alice(model.parameters(), seed=SEED, **KWARGS)
    train(model, opt, my_half(x, rank), my_half(y, rank), 7)
    dcp.save(_dcp_state(model, opt), checkpoint_id=str(out / "ckpt-2"))
    saved = snapshot(model, opt)
    train(model, opt, my_half(x, rank), my_half(y, rank), 5)
    return {**snapshot(model, opt), "saved": saved}


def case_dcp_load(rank, out: Path):
    """FSDP2 on 2 ranks loads a single-process checkpoint (another seed at construction)
    and trains 5 more steps."""
    model, x, y = problem()
    shard(model)
    opt = Alice(model.parameters(), seed=99, **KWARGS)
    _dcp_load(model, opt, out / "ckpt-1")
    loaded = snapshot(model, opt)
    train(model, opt, my_half(x, rank), my_half(y, rank), 5)
    return {**snapshot(model, opt), "loaded": loaded}


CASES = {f.__name__: f for f in (case_ddp, case_ddp_seeds, case_fsdp, case_dcp_save, case_dcp_load)}


def _worker(rank: int, case: str, out: str) -> None:
    from datetime import timedelta

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store-{case}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        result = CASES[case](rank, Path(out))
        torch.save(result, f"{out}/{case}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(case: str, out: Path) -> list[dict]:
    """Run ``case`` on ``WORLD`` gloo processes (at most ``TIMEOUT_S`` seconds); each rank's result."""
    context = mp.start_processes(_worker, args=(case, str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{case} on {WORLD} gloo processes did not finish within {TIMEOUT_S} s")
    return [torch.load(out / f"{case}-{rank}.pt", weights_only=False) for rank in range(WORLD)]


# -- the tests -------------------------------------------------------------------------------


def test_ddp_on_two_ranks_follows_one_process_on_the_whole_batch(tmp_path):
    results = spawn("case_ddp", tmp_path)
    model, opt = single()
    for got in results:
        assert_matches(got, model, opt)
    assert all(torch.equal(a, b) for a, b in zip(results[0]["params"], results[1]["params"]))


def test_ddp_replicas_agree_when_ranks_seed_torch_differently_and_skip_together(tmp_path):
    results = spawn("case_ddp_seeds", tmp_path)
    torch.manual_seed(100)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))  # rank 0's default draw
    assert [r["seed"] for r in results] == [seed, seed]
    assert all("differ from rank 0's" in r["refused"] for r in results)
    model, opt = single(nan_at=5, seed=seed)
    for got in results:
        assert got["skipped"] == 1
        assert_matches(got, model, opt)
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)
    for sa, sb in zip(results[0]["state"], results[1]["state"]):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fsdp2_on_two_ranks_follows_one_process_and_skips_a_nan_seen_by_one_rank(tmp_path):
    """Also in closure-free mode (the loop calls backward and ``step()``)."""
    results = spawn("case_fsdp", tmp_path)
    for got in results:  # the state is the local shard's, laid out like the parameter
        assert all(local == state and same for local, state, same in got["shapes"])
    assert results[1]["shapes"][-2][0] == (0, 3)  # the 1-row layer's shard on rank 1 is empty
    model, opt = single(steps=5)
    for got in results:
        assert_matches(got["first"], model, opt)
    model, opt = single(nan_at=7)
    for got in results:
        assert got["skipped"] == 1
        assert_matches(got, model, opt)
    model, x, y = problem()
    opt = closure_free(model, x, y, 20)  # and the closure-free mode too
    for got in results:
        assert_matches(got["free"], model, opt)


def test_fsdp2_on_one_rank_is_bit_for_bit_one_process(tmp_path):
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, x, y = problem()
        shard(model)
        opt = Alice(model.parameters(), seed=SEED, **KWARGS)
        assert all(isinstance(opt.state[p]["G"], DTensor) for p in model.parameters())
        train(model, opt, x, y, STEPS, nan_at=7)
        got = snapshot(model, opt)
    finally:
        dist.destroy_process_group()
    assert_matches(got, *single(nan_at=7), exact=True)


def test_dcp_sharded_save_on_two_ranks_loads_on_one_and_continues(tmp_path):
    results = spawn("case_dcp_save", tmp_path)
    model, x, y = problem()
    opt = Alice(model.parameters(), seed=1, **KWARGS)
    _dcp_load(model, opt, tmp_path / "ckpt-2")
    assert_matches(results[0]["saved"], model, opt, exact=True)  # what was saved comes back
    train(model, opt, x, y, 5)
    for got in results:
        assert_matches(got, model, opt)  # and the run goes on as on two ranks
    assert_matches(results[0], *single(), exact=False)


def test_dcp_save_on_one_process_loads_on_two_ranks_and_continues(tmp_path):
    from torch.distributed import checkpoint as dcp

    model, opt = single(steps=7)
    dcp.save(_dcp_state(model, opt), checkpoint_id=str(tmp_path / "ckpt-1"))
    saved = snapshot(model, opt)
    results = spawn("case_dcp_load", tmp_path)
    for got in results:
        assert got["seed"] == SEED
        for a, b in zip(got["loaded"]["params"], saved["params"]):
            assert torch.equal(a, b)
        for sa, sb in zip(got["loaded"]["state"], saved["state"]):
            assert all(torch.equal(sa[k], sb[k]) for k in sb)
    x, y = problem()[1:]
    train(model, opt, x, y, 5)
    for got in results:
        assert_matches(got, model, opt)


def test_without_a_process_group_nothing_is_communicated():
    from alice import distributed as alice_dist

    assert not dist.is_initialized()
    ok = torch.tensor(False)
    assert alice_dist.agree_flag(ok) is ok
    torch.manual_seed(5)
    drawn = alice_dist.agree_seed(None)
    torch.manual_seed(5)
    assert Alice([nn.Parameter(torch.zeros(2))]).seed == drawn
    assert alice_dist.agree_seed(17) == 17


def test_a_dtensor_sharded_along_another_dim_is_refused(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = nn.Parameter(distribute_tensor(torch.zeros(4, 6), mesh, [Shard(1)]))
        with pytest.raises(ValueError, match=r"sharded along dim 0"):
            Alice([p])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    os.sys.exit(pytest.main([__file__, "-q"]))
