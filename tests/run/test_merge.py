"""Whole-model merge baselines: formulas against hand-computed values (mergekit's
definitions), merges over files, determinism, loading, bad input."""

from __future__ import annotations

import hashlib

import pytest
import torch

from actlang.arch.errors import RuntimeUserError
from actlang.arch.registry import MERGE_METHODS
from actlang.run.checkpoint import Checkpoint
from actlang.run.merge import (
    merge_generator,
    merge_models,
    merge_tensor_mergekit,
    resolve_defaults,
)

from .conftest import make_model, perturbed, save_model

T = torch.tensor


# ------------------------------------------------------------------------- pure formulas


def test_mergekit_defaults():
    assert resolve_defaults("linear", None, None) == (True, False)
    assert resolve_defaults("task_arithmetic", None, None) == (False, False)
    assert resolve_defaults("ties", None, None) == (True, False)
    assert resolve_defaults("dare_linear", None, None) == (False, True)
    assert resolve_defaults("dare_ties", None, None) == (False, True)
    assert resolve_defaults("ties", False, True) == (False, True)
    assert set(MERGE_METHODS.names) == {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"}


def test_linear_weighted_mean():
    a, b = T([1.0, 2.0, -3.0]), T([5.0, -2.0, 1.0])
    out = merge_tensor_mergekit("linear", None, [a, b], [1.0, 3.0])
    torch.testing.assert_close(out, (a + 3 * b) / 4)
    out = merge_tensor_mergekit("linear", None, [a, b], [1.0, 3.0], normalize=False)
    torch.testing.assert_close(out, a + 3 * b)
    # the base is not a term of a linear merge
    assert torch.equal(merge_tensor_mergekit("linear", T([9.0, 9.0, 9.0]), [a, b]), (a + b) / 2)


def test_task_arithmetic():
    base = T([1.0, -1.0, 0.5, 2.0])
    t1, t2 = T([2.0, -1.0, 0.0, 2.5]), T([0.0, 1.0, 0.5, 3.0])
    d1, d2 = t1 - base, t2 - base
    out = merge_tensor_mergekit("task_arithmetic", base, [t1, t2], [0.5, 1.0], lambda_=2.0)
    torch.testing.assert_close(out, base + 2.0 * (0.5 * d1 + 1.0 * d2))  # mergekit: normalize off
    out = merge_tensor_mergekit("task_arithmetic", base, [t1, t2], [0.5, 1.0], lambda_=2.0, normalize=True)
    torch.testing.assert_close(out, base + 2.0 * (0.5 * d1 + 1.0 * d2) / 1.5)
    assert torch.equal(merge_tensor_mergekit("task_arithmetic", base, [t1, t2], lambda_=0.0), base)


def test_ties_hand_computed():
    base = T([1.0, 1.0, 1.0, 1.0])
    d1, d2 = T([3.0, -1.0, 0.5, -2.0]), T([-1.0, -4.0, 1.0, 0.2])
    # density 0.5 on 4 entries: k = 2 -> d1 keeps [3, 0, 0, -2], d2 keeps [-1, -4, 0, 0]
    # weights [2, 1]: w*d = [6, 0, 0, -4], [-1, -4, 0, 0]; sum [5, -4, 0, -4] -> signs [+, -, +, -]
    # consensus masks [1, 0, 0, 1], [0, 1, 0, 0]; mixed [6, -4, 0, -4]; divisor [2, 1, 0->1, 2]
    out = merge_tensor_mergekit("ties", base, [base + d1, base + d2], [2.0, 1.0], density=0.5)
    torch.testing.assert_close(out, base + T([3.0, -4.0, 0.0, -2.0]))
    out = merge_tensor_mergekit("ties", base, [base + d1, base + d2], [2.0, 1.0], density=0.5, lambda_=0.5)
    torch.testing.assert_close(out, base + T([1.5, -2.0, 0.0, -1.0]))
    out = merge_tensor_mergekit("ties", base, [base + d1, base + d2], [2.0, 1.0], density=0.5, normalize=False)
    torch.testing.assert_close(out, base + T([6.0, -4.0, 0.0, -4.0]))


def test_ties_density_one_is_sign_consensus_only():
    base = torch.zeros(3)
    d1, d2 = T([1.0, -2.0, 3.0]), T([-3.0, 1.0, 1.0])
    # sums [-2, -1, 4] -> signs [-, -, +]; masks [0,1,1], [1,0,1]; mixed [-3, -2, 4]; divisors [1, 1, 2]
    out = merge_tensor_mergekit("ties", base, [d1, d2], density=1.0)
    torch.testing.assert_close(out, T([-3.0, -2.0, 2.0]))


def test_magnitude_keeps_max_1_int_density_numel_entries():
    base = torch.zeros(10)
    d = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
    out = merge_tensor_mergekit("ties", base, [d], density=0.35)  # int(3.5) = 3: 10, -9... keep |8|,|9|,|10|
    assert torch.equal(out != 0, d.abs() >= 8)
    torch.testing.assert_close(out[out != 0], d[d.abs() >= 8])  # ties: no rescale by default
    # int(density * numel) == 0: a positive density still keeps the largest entry
    tiny = merge_tensor_mergekit("ties", base, [d], density=0.05)
    assert torch.equal(tiny != 0, d.abs() == 10) and tiny.abs().max() == 10


def _l1_rescaled(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mergekit's rescale: the masked task vector keeps the unmasked one's L1 norm."""
    masked = delta * mask
    return masked * (delta.abs().sum() / masked.abs().sum())


def test_ties_rescale_keeps_the_l1_norm():
    base = torch.zeros(10)
    d = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
    out = merge_tensor_mergekit("ties", base, [d], density=0.35, rescale=True)
    torch.testing.assert_close(out, _l1_rescaled(d, (d.abs() >= 8).float()), rtol=0, atol=0)
    assert out.abs().sum() == d.abs().sum()


def _dare_masks(seed: int, shape, density: float, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.bernoulli(torch.full(shape, density), generator=g) for _ in range(n)]


def test_dare_linear_hand_computed():
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    t1, t2 = base + torch.randn(6, 5), base + torch.randn(6, 5)
    p = 0.4
    m1, m2 = _dare_masks(7, (6, 5), p, 2)
    out = merge_tensor_mergekit("dare_linear", base, [t1, t2], [1.0, 0.5], density=p, lambda_=1.5,
                                generator=torch.Generator().manual_seed(7))
    expect = base + 1.5 * (1.0 * _l1_rescaled(t1 - base, m1) + 0.5 * _l1_rescaled(t2 - base, m2))
    torch.testing.assert_close(out, expect)
    out = merge_tensor_mergekit("dare_linear", base, [t1, t2], [1.0, 0.5], density=p, rescale=False,
                                normalize=True, generator=torch.Generator().manual_seed(7))
    expect = base + (1.0 * (t1 - base) * m1 + 0.5 * (t2 - base) * m2) / 1.5
    torch.testing.assert_close(out, expect)


def test_dare_ties_hand_computed():
    torch.manual_seed(1)
    base = torch.randn(8, 4)
    t = [base + torch.randn(8, 4) for _ in range(3)]
    w = torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1)
    p = 0.6
    masks = torch.stack(_dare_masks(3, (8, 4), p, 3))
    deltas = torch.stack([_l1_rescaled(x - base, m) for x, m in zip(t, masks)])
    wd = deltas * w
    sign = (wd.sum(0) >= 0).float() * 2 - 1
    agree = (wd.sign() == sign).float()
    div = (w * agree).sum(0)
    div[div == 0] = 1
    for normalize in (False, True):
        mixed = (wd * agree).sum(0)
        if normalize:
            mixed = mixed / div
        out = merge_tensor_mergekit("dare_ties", base, t, [1.0, 2.0, 0.5], density=p, normalize=normalize,
                                    generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, base + mixed)


def test_dare_statistics():
    base = torch.zeros(200_000)
    d = torch.ones(200_000)
    out = merge_tensor_mergekit("dare_linear", base, [d], density=0.3, generator=torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    factor = 200_000 / int(kept.sum())  # the L1 norm kept exactly, not 1 / density
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), factor))
    assert abs(out.sum().item() - 200_000) < 1  # rescaling keeps the task vector's L1 norm


def test_density_one_dare_equals_task_arithmetic():
    torch.manual_seed(2)
    base = torch.randn(5, 5)
    t = [base + torch.randn(5, 5), base + torch.randn(5, 5)]
    ta = merge_tensor_mergekit("task_arithmetic", base, t, [0.3, 0.7])
    assert torch.equal(merge_tensor_mergekit("dare_linear", base, t, [0.3, 0.7], density=1.0), ta)


def test_dtype_roundtrip_and_integer_tensors():
    base = torch.randn(4, 4).to(torch.bfloat16)
    t = [(base.float() + 0.1).to(torch.bfloat16)]
    out = merge_tensor_mergekit("task_arithmetic", base, t)
    assert out.dtype == torch.bfloat16
    ib = torch.arange(4)
    assert torch.equal(merge_tensor_mergekit("ties", ib, [ib + 1], density=0.5), ib)


def test_generator_depends_on_seed_and_name_only():
    a = torch.rand(5, generator=merge_generator(3, "model.layers.0.mlp.up_proj.weight"))
    torch.manual_seed(12345)  # the global generator's state is not an input
    torch.rand(7)
    b = torch.rand(5, generator=merge_generator(3, "model.layers.0.mlp.up_proj.weight"))
    c = torch.rand(5, generator=merge_generator(4, "model.layers.0.mlp.up_proj.weight"))
    d = torch.rand(5, generator=merge_generator(3, "model.layers.1.mlp.up_proj.weight"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="ties", base=None), "needs a base"),
    (dict(method="task_arithmetic", weights=[1.0]), "2 donors but 1 weights"),
    (dict(method="ties", density=0.0), "density must be in (0, 1]"),
    (dict(method="dare_ties", density=1.5), "density must be in (0, 1]"),
    (dict(method="slerp"), "unknown merge method"),
    (dict(method="linear", lambda_=0.5), "no lambda"),
    (dict(method="linear", weights=[1.0, -1.0]), "sum to 0"),
])
def test_bad_arguments(kwargs, message):
    args = dict(method="ties", base=torch.zeros(3), tensors=[torch.ones(3), -torch.ones(3)])
    args.update(kwargs)
    with pytest.raises(RuntimeUserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        merge_tensor_mergekit(**args)


# ------------------------------------------------------------------------- over files


@pytest.fixture(scope="module")
def merge_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = make_model("llama", seed=11)
    out = {"base": save_model(base, root / "base")}
    for i in (1, 2):
        out[f"d{i}"] = save_model(perturbed(base, seed=200 + i), root / f"d{i}")
    out["other"] = save_model(make_model("llama", seed=3, num_hidden_layers=1), root / "other")
    return out


def _digest(path) -> str:
    ck = Checkpoint.open(path)
    h = hashlib.sha256()
    for n in sorted(ck.keys()):
        h.update(n.encode())
        h.update(ck.get(n).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_linear_of_identical_models_is_that_model(merge_dirs, tmp_path):
    report = merge_models("linear", [merge_dirs["d1"]] * 2, tmp_path / "m", weights=[0.25, 0.25])
    a, b = Checkpoint.open(merge_dirs["d1"]), Checkpoint.open(tmp_path / "m")
    assert set(a.keys()) == set(b.keys())
    for n in a.keys():
        assert torch.equal(a.get(n), b.get(n)), n  # (w t + w t) / 2w is exact in binary floating point
    assert report.elements_changed == 0 and report.tensors == len(a.keys())
    merge_models("linear", [merge_dirs["d1"]] * 3, tmp_path / "m3")
    c = Checkpoint.open(tmp_path / "m3")
    for n in a.keys():
        torch.testing.assert_close(c.get(n), a.get(n), rtol=1e-6, atol=0)  # 3t / 3: one rounding


def test_task_arithmetic_lambda_zero_is_base(merge_dirs, tmp_path):
    merge_models("task_arithmetic", [merge_dirs["d1"], merge_dirs["d2"]], tmp_path / "m",
                 base=merge_dirs["base"], lambda_=0.0)
    assert _digest(tmp_path / "m") == _digest(merge_dirs["base"])


def test_files_match_the_pure_function(merge_dirs, tmp_path):
    donors = [merge_dirs["d1"], merge_dirs["d2"]]
    merge_models("dare_ties", donors, tmp_path / "m", base=merge_dirs["base"], density=0.3, seed=5,
                 weights=[0.7, 0.4], lambda_=1.3)
    base, d1, d2 = (Checkpoint.open(p) for p in (merge_dirs["base"], *donors))
    res = Checkpoint.open(tmp_path / "m")
    for n in reversed(sorted(base.keys())):  # any order: masks depend on (seed, name) only
        expect = merge_tensor_mergekit("dare_ties", base.get(n), [d1.get(n), d2.get(n)], [0.7, 0.4], 0.3, 1.3,
                                       generator=merge_generator(5, n))
        assert torch.equal(res.get(n), expect), n


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_sparse_merges_deterministic_by_seed(method, merge_dirs, tmp_path):
    donors = [merge_dirs["d1"], merge_dirs["d2"]]
    kw = dict(base=merge_dirs["base"], density=0.5)
    merge_models(method, donors, tmp_path / "a", seed=1, **kw)
    merge_models(method, donors, tmp_path / "b", seed=1, **kw)
    merge_models(method, donors, tmp_path / "c", seed=2, **kw)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    same = _digest(tmp_path / "a") == _digest(tmp_path / "c")
    assert same == (method == "ties")  # magnitude pruning has no randomness


@pytest.mark.parametrize("method", sorted(MERGE_METHODS.names))
def test_merged_dir_loads(method, merge_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    base = None if method == "linear" else merge_dirs["base"]
    density = 1.0 if method in ("linear", "task_arithmetic") else 0.5
    report = merge_models(method, [merge_dirs["d1"], merge_dirs["d2"]], tmp_path / "m", base=base,
                          density=density, spec_text="merge m { }", max_shard_size=40_000)
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()  # sharded
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 3]])).logits
    assert torch.isfinite(logits).all()
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    card = (tmp_path / "m" / "README.md").read_text()
    assert method in card and "merge m { }" in card
    js = report.to_json()
    assert js["method"] == method and js["tensors"] == len(Checkpoint.open(merge_dirs["base"]).keys())
    assert 0 < js["elements_changed"] <= js["elements"]


def test_merge_files_bad_input(merge_dirs, tmp_path):
    with pytest.raises(RuntimeUserError, match="differ|missing|not in"):
        merge_models("task_arithmetic", [merge_dirs["d1"], merge_dirs["other"]], tmp_path / "m",
                     base=merge_dirs["base"])
    with pytest.raises(RuntimeUserError, match="needs a base"):
        merge_models("dare_ties", [merge_dirs["d1"]], tmp_path / "m")
    with pytest.raises(RuntimeUserError, match="2 donors but 3 weights"):
        merge_models("ties", [merge_dirs["d1"], merge_dirs["d2"]], tmp_path / "m", base=merge_dirs["base"],
                     weights=[1, 2, 3])
    with pytest.raises(RuntimeUserError, match="not found"):
        merge_models("linear", [tmp_path / "nope"], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    merge_models("linear", [merge_dirs["d1"]], tmp_path / "m")
    with pytest.raises(RuntimeUserError, match="already exists"):
        merge_models("linear", [merge_dirs["d1"]], tmp_path / "m")
    merge_models("linear", [merge_dirs["d2"]], tmp_path / "m", overwrite=True)
    assert _digest(tmp_path / "m") == _digest(merge_dirs["d2"])
    with pytest.raises(RuntimeUserError, match="overlaps"):
        merge_models("linear", [merge_dirs["d1"]], merge_dirs["d1"], overwrite=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                   torch.int64, torch.uint8])
def test_changed_elements_are_counted_by_their_bits(dtype):
    """What the report counts: elements whose stored bits differ (-0.0 against 0.0 and a
    NaN against itself included, as a checkpoint stores them)."""
    from actlang.run.merge import _n_bits_differ

    a = torch.arange(12).reshape(3, 4).to(dtype)
    b = a.clone()
    b[0, 1] += 1
    b[2, 3] += 2
    assert _n_bits_differ(a, b) == 2
    assert _n_bits_differ(a, a.clone()) == 0
    if dtype.is_floating_point:
        zero = torch.zeros(3, dtype=dtype)
        assert _n_bits_differ(zero, -zero) == 3
        nan = torch.full((2,), float("nan"), dtype=dtype)
        assert _n_bits_differ(nan, nan.clone()) == 0


@pytest.mark.parametrize("density", [0.001, 0.1, 0.37, 0.5, 0.99])
def test_magnitude_selection_keeps_what_a_stable_sort_keeps_even_among_equal_magnitudes(density):
    """The k-th largest magnitude found by selection, ties at it broken by index: the same
    entries a stable descending argsort keeps (many equal magnitudes here)."""
    from actlang.run.merge import _magnitude_

    g = torch.Generator().manual_seed(3)
    delta = torch.randint(-4, 5, (37, 29), generator=g).float()
    k = max(1, int(density * delta.numel()))
    order = torch.argsort(delta.abs().reshape(-1), descending=True, stable=True)[:k]
    mask = torch.zeros(delta.numel())
    mask[order] = 1
    assert torch.equal(_magnitude_(delta.clone(), density), delta * mask.view(delta.shape))


@pytest.mark.parametrize("kind", ["normal", "few values", "sorted", "one value", "spikes"])
def test_the_sampled_kth_largest_is_the_exact_one(kind):
    """Above a million values the k-th largest is bracketed from a sample: exact whatever
    the data (many equal values, sorted input, a few huge ones), for any k."""
    from actlang.run.merge import _kth_largest

    n = 3_000_017
    g = torch.Generator().manual_seed(11)
    values = {"normal": lambda: torch.randn(n, generator=g).abs(),
              "few values": lambda: torch.randint(0, 7, (n,), generator=g).float(),
              "sorted": lambda: torch.arange(n, dtype=torch.float32) / n,
              "one value": lambda: torch.full((n,), 0.25),
              "spikes": lambda: torch.where(torch.rand(n, generator=g) < 1e-4,
                                            torch.tensor(1e30), torch.rand(n, generator=g))}[kind]()
    for k in (1, 2, 999, n // 3, n // 2 + 1, n - 5, n):
        assert _kth_largest(values, k) == torch.kthvalue(values, n - k + 1).values, (kind, k)
