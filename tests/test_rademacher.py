"""Counter-based Rademacher signs: deterministic, balanced, uncorrelated, shard-independent."""

import pytest
import torch

from alice._rademacher import as_int32, mix32, rademacher, signs_at, tensor_key

N = 1 << 16


def test_signs_are_plus_minus_one_and_deterministic():
    z = rademacher(tensor_key(1, 2, 3), 1000)
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(z, rademacher(tensor_key(1, 2, 3), 1000))


def test_balanced_and_uncorrelated():
    bound = 5 / N**0.5  # five standard deviations
    z = rademacher(tensor_key(0, 1, 0), N, dtype=torch.float64)
    assert abs(z.mean()) < bound
    for lag in (1, 2, 31, 32, 33):  # neighbours, also across 32-element words
        assert abs((z[:-lag] * z[lag:]).mean()) < bound
    others = {
        "next step": rademacher(tensor_key(0, 2, 0), N, dtype=torch.float64),
        "next parameter": rademacher(tensor_key(0, 1, 1), N, dtype=torch.float64),
        "next seed": rademacher(tensor_key(1, 1, 0), N, dtype=torch.float64),
    }
    for name, other in others.items():
        assert abs((z * other).mean()) < bound, name
    bits = (z.view(-1, 32) < 0).double().mean(0)  # every bit position of the hash is fair
    assert ((bits - 0.5).abs() < 5 * 0.5 / (N / 32) ** 0.5).all()


def test_a_shard_gets_its_slice_of_the_whole():
    key = tensor_key(7, 11, 2)
    whole = rademacher(key, 1000)
    for offset, numel in [(0, 1), (5, 40), (31, 2), (32, 64), (999, 1)]:
        assert torch.equal(rademacher(key, numel, offset=offset), whole[offset : offset + numel])


def test_int32_kernel_form_matches_the_int64_definition():
    key = tensor_key(123456789012, 5, 9)
    index = torch.arange(5000)
    ref = signs_at(index, key)
    assert torch.equal(rademacher(key, 5000), ref.float())
    fast = signs_at(index.to(torch.int32), torch.tensor(as_int32(key), dtype=torch.int32))
    assert torch.equal(fast.long(), ref)


def test_mix32_is_the_lowbias32_hash():
    # Reference values of lowbias32 computed with plain Python integers.
    def lowbias32(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 12345, 2**31, 2**32 - 1]
    assert [mix32(v) for v in values] == [lowbias32(v) for v in values]
    assert mix32(torch.tensor(values)).tolist() == [lowbias32(v) for v in values]


def test_signs_do_not_touch_the_global_rng():
    state = torch.get_rng_state()
    rademacher(tensor_key(0, 1, 0), 100)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("seed", [0, 2**40 + 3])
def test_key_depends_on_every_input(seed):
    keys = {tensor_key(seed, n, i) for n in range(1, 20) for i in range(20)}
    assert len(keys) == 19 * 20
