import math

import pytest
import torch
from torch import nn

from issp import IsspError, pruning
from issp.prunable import prunable_weights
from issp.pruning import GREG_CEILING, Pruner
from issp.selection import nm_groups, nm_mask, rigl_exchange, smallest_mask


class Tiny(nn.Module):
    """head conv, two body convs, a linear, tail conv: the head and tail stay dense."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
        self.mix = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.head(x))
        x = self.norm(self.mix(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.tail(x)


def run(method: str, steps: int, prune_steps: int, ratio=0.9, alpha=0.5, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(
        model, method, ratio, prune_steps=prune_steps, alpha=alpha, optimizer=optimizer, **kwargs
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(2, 3, 6, 6, generator=generator)
        loss = (model(x) - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    return model, optimizer, pruner


def test_prunable_weights_skip_first_and_last_conv_and_never_biases_or_norms():
    names = list(prunable_weights(Tiny()))
    assert names == ["body.0.weight", "body.1.weight", "mix.weight"]
    assert list(prunable_weights(Tiny(), skip=["mix", "head"])) == [
        "body.0.weight",
        "body.1.weight",
        "tail.weight",
    ]


def test_smallest_mask_selects_exactly_k_even_with_ties():
    weight = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 2.0, 3.0])
    for k in range(9):
        mask = smallest_mask(weight, k)
        assert int(mask.sum()) == k
        if 0 < k < 8:
            assert weight[mask].abs().max() <= weight[~mask].abs().min()


def test_issp_shrinks_selected_weights_by_alpha_and_leaves_the_rest():
    torch.manual_seed(0)
    model = Tiny()
    pruner = Pruner(model, "issp", ratio=0.5, prune_steps=10, alpha=0.3)
    before = {name: w.detach().clone() for name, w in pruner.weights.items()}
    pruner.step()
    for name, w in pruner.weights.items():
        mask = pruner.masks[name]
        assert int(mask.sum()) == math.ceil(0.5 * w.numel())
        torch.testing.assert_close(w[mask], before[name][mask] * 0.3)
        torch.testing.assert_close(w[~mask], before[name][~mask])
        # the shrunk weights were the smallest ones
        assert before[name][mask].abs().max() <= before[name][~mask].abs().min()


def test_iht_zeroes_the_selection_at_every_step():
    model, _, pruner = run("iht", steps=3, prune_steps=10)
    for name, w in pruner.weights.items():
        assert int((w == 0).sum()) >= math.ceil(0.9 * w.numel())
        assert torch.all(w[pruner.masks[name]] == 0)
    assert not pruner.frozen


@pytest.mark.parametrize("method", ["issp", "iht", "l1", "gmp", "scratch"])
def test_mask_freezes_at_kp_with_exact_counts_and_stays_zero(method):
    model, optimizer, pruner = run(method, steps=12, prune_steps=6, ratio=0.8)
    assert pruner.frozen
    for name, w in pruner.weights.items():
        mask = pruner.masks[name]
        assert int(mask.sum()) == math.ceil(0.8 * w.numel())
        assert torch.all(w[mask] == 0)
        # Adam's moments of pruned weights are zero, so nothing can revive them.
        for value in optimizer.state[w].values():
            if value.shape == w.shape:
                assert torch.all(value[mask] == 0)
    assert pruner.telemetry()["flips"][6:].sum() == 0


def test_freeze_mask_does_not_move_after_kp():
    _, _, pruner = run("issp", steps=8, prune_steps=4)
    frozen = {k: v.clone() for k, v in pruner.masks.items()}
    _, _, later = run("issp", steps=16, prune_steps=4)
    for name in frozen:
        assert torch.equal(frozen[name], later.masks[name])


def test_dense_and_l1_before_kp_prune_nothing():
    model, _, pruner = run("dense", steps=5, prune_steps=3)
    assert all(int((w == 0).sum()) == 0 for w in pruner.weights.values())
    assert pruner.pruned_layers() == []
    _, _, l1 = run("l1", steps=3, prune_steps=5)
    assert all(int((w == 0).sum()) == 0 for w in l1.weights.values())


def test_global_scope_prunes_ratio_of_all_weights_together():
    _, _, pruner = run("iht", steps=4, prune_steps=2, scope="global")
    total = sum(w.numel() for w in pruner.weights.values())
    pruned = sum(int(m.sum()) for m in pruner.masks.values())
    assert pruned == math.ceil(0.9 * total)


def test_telemetry_has_one_row_per_step_and_issp_flips_more_than_iht():
    _, _, issp = run("issp", steps=30, prune_steps=25, ratio=0.5, alpha=0.95)
    _, _, iht = run("iht", steps=30, prune_steps=25, ratio=0.5)
    tel = issp.telemetry()
    assert set(tel) == {"flips", "grad_norm", "sparsity", "kept_abs", "selected_abs"}
    assert all(v.shape == (30, 3) for v in tel.values())
    assert (tel["grad_norm"] > 0).all()
    assert tel["flips"].sum() > iht.telemetry()["flips"].sum()
    # ISS-P shrinks rather than zeroes, so before Kp its layers are not sparse.
    assert tel["sparsity"][:24].max() < 0.05
    assert tel["sparsity"][-1].min() >= 0.5


def test_state_dict_resume_continues_identically():
    model, optimizer, pruner = run("issp", steps=5, prune_steps=8)
    full_model, _, full = run("issp", steps=10, prune_steps=8)
    torch.manual_seed(0)
    resumed_model = Tiny()
    resumed_model.load_state_dict(model.state_dict())
    resumed_opt = torch.optim.Adam(resumed_model.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(optimizer.state_dict())
    resumed = Pruner(resumed_model, "issp", 0.9, prune_steps=8, alpha=0.5, optimizer=resumed_opt)
    resumed.load_state_dict(pruner.state_dict())
    generator = torch.Generator().manual_seed(0)
    for step in range(10):
        x = torch.rand(2, 3, 6, 6, generator=generator)
        if step < 5:
            continue
        loss = (resumed_model(x) - x).abs().mean()
        resumed_opt.zero_grad()
        loss.backward()
        resumed_opt.step()
        resumed.step()
    for name in full.masks:
        assert torch.equal(full.masks[name], resumed.masks[name])
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert resumed.telemetry()["flips"].shape == (10, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "magic"},
        {"ratio": 1.0},
        {"ratio": -0.1},
        {"alpha": 1.0},
        {"alpha": 0.0},
        {"alpha": None},
        {"scope": "layer"},
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs):
    with pytest.raises(IsspError):
        Pruner(Tiny(), **({"alpha": 0.5} | kwargs))


def test_only_iss_p_needs_alpha():
    with pytest.raises(IsspError, match="alpha must be in"):
        Pruner(Tiny(), "issp", 0.5)
    assert Pruner(Tiny(), "iht", 0.5).alpha is None


def test_telemetry_off_prunes_the_same_and_records_nothing():
    _, _, recorded = run("issp", steps=8, prune_steps=5)
    _, _, silent = run("issp", steps=8, prune_steps=5, telemetry=False)
    for name in recorded.masks:
        assert torch.equal(recorded.masks[name], silent.masks[name])
    assert silent.telemetry()["flips"].shape == (0, 3)


def test_remove_bakes_in_the_zeros_and_frees_the_model_to_train_without_the_pruner():
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, "issp", 0.75, prune_steps=100, alpha=0.5, optimizer=optimizer)
    pruner.step()  # still in the pruning stage: the selection is only shrunk, not zero
    plain = pruner.remove()
    assert plain is model
    for name, w in prunable_weights(model).items():
        assert int((w == 0).sum()) == math.ceil(0.75 * w.numel()), name
    # No hooks left: a masked weight gets its gradient and moves again.
    loss = model(torch.rand(1, 3, 8, 8)).square().mean()
    loss.backward()
    optimizer.step()
    weight = model.body[0].weight
    assert int((weight == 0).sum()) < math.ceil(0.75 * weight.numel())


@pytest.mark.parametrize("method", ["issp", "iht"])
@pytest.mark.parametrize("pattern", ["2:4", "19:20"])
def test_after_kp_every_group_of_m_weights_has_n_zeros(method, pattern):
    n, m = (int(x) for x in pattern.split(":"))
    model, _, pruner = run(method, steps=8, prune_steps=5, ratio=n / m, pattern=pattern)
    for name, w in pruner.weights.items():
        layer_n, layer_m = nm_groups(w.numel(), n, m)
        zeros = (w.detach().reshape(-1, layer_m) == 0).sum(dim=1)
        assert torch.all(zeros == layer_n), name
        assert layer_n >= n and layer_m - layer_n == m - n, "as many survivors per group"
        if w.numel() % m == 0:
            assert (layer_n, layer_m) == (n, m), "exactly N of M where M divides the layer"


def test_n_m_is_raised_as_the_authors_do_where_m_does_not_divide_the_layer():
    assert nm_groups(576, 19, 20) == (23, 24)  # an 8 -> 8 3x3 conv
    assert nm_groups(64, 19, 20) == (31, 32)
    assert nm_groups(40, 19, 20) == (19, 20)
    weight = torch.tensor([[4.0, -1.0, 3.0, 0.5], [2.0, 8.0, -7.0, 1.0]])
    expected = [[False, True, False, True], [True, False, False, True]]
    assert nm_mask(weight, 2, 4).tolist() == expected


def test_a_group_larger_than_a_layer_is_refused_when_the_pruner_is_made():
    with pytest.raises(IsspError, match="group of 2000 weights is larger than a layer"):
        Pruner(Tiny(), "iht", 0.5, prune_steps=5, pattern="1000:2000")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "scratch", "ratio": 0.5, "pattern": "2:4"},
        {"method": "iht", "ratio": 0.5, "pattern": "2:4", "scope": "global"},
        {"method": "iht", "ratio": 0.9, "pattern": "2:4"},
        {"method": "iht", "ratio": 0.5, "pattern": "4:2"},
        {"method": "iht", "ratio": 0.5, "pattern": "half"},
    ],
)
def test_a_pattern_that_cannot_apply_is_refused(kwargs):
    with pytest.raises(IsspError):
        Pruner(Tiny(), **kwargs)


def test_greg_penalises_its_first_selection_harder_and_harder_then_prunes_it():
    _, _, first = run("greg", steps=1, prune_steps=40, ratio=0.5)
    chosen = {name: mask.clone() for name, mask in first.masks.items()}
    _, _, pruner = run("greg", steps=20, prune_steps=40, ratio=0.5)
    for name, penalty in pruner.penalty.items():
        assert torch.equal(pruner.masks[name], chosen[name]), "chosen once, on the first step"
        assert torch.all(penalty[~chosen[name]] == 0), "only the selection is penalised"
        assert penalty[chosen[name]].max().item() == pytest.approx(GREG_CEILING * 20 / 28)
    greg, _, pruner = run("greg", steps=38, prune_steps=40, ratio=0.5)
    assert max(p.max().item() for p in pruner.penalty.values()) == pytest.approx(GREG_CEILING)
    dense, _, _ = run("dense", steps=38, prune_steps=40, ratio=0.5)
    for name in chosen:
        penalised = greg.get_parameter(name).detach().abs()[chosen[name]].mean()
        free = dense.get_parameter(name).detach().abs()[chosen[name]].mean()
        assert penalised < free, "the penalty reaches the gradient and shrinks them"
    _, _, pruner = run("greg", steps=45, prune_steps=40, ratio=0.5)
    for name, w in pruner.weights.items():
        assert torch.equal(w.detach() == 0, chosen[name]), "what it penalised is pruned"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_rigl_keeps_each_layer_s_exact_ratio_and_regrows_at_zero(monkeypatch, layout):
    monkeypatch.setattr(pruning, "RIGL_INTERVAL", 5)
    torch.manual_seed(0)
    model = Tiny().to(memory_format=layout)  # bf16 training runs edsr channels-last
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, "rigl", 0.75, prune_steps=23, optimizer=optimizer)
    generator = torch.Generator().manual_seed(0)
    changed_at = []
    for step in range(1, 30):
        before = {name: mask.clone() for name, mask in pruner.masks.items()}
        x = torch.rand(2, 3, 6, 6, generator=generator)
        optimizer.zero_grad()
        (model(x) - x).abs().mean().backward()
        optimizer.step()
        pruner.step()
        for name, w in pruner.weights.items():
            mask = pruner.masks[name]
            assert int(mask.sum()) == math.ceil(0.75 * w.numel()), (step, name)
            assert torch.all(w[mask] == 0), "pruned weights are zero"
            grown = before[name] & ~pruner.masks[name]
            assert torch.all(w[grown] == 0), "a regrown weight starts at zero"
            for moment in optimizer.state[w].values():
                if moment.shape == w.shape:
                    assert torch.all(moment[grown] == 0), "and with no Adam history"
        if any(not torch.equal(before[n], pruner.masks[n]) for n in before):
            changed_at.append(step)
    assert changed_at == [5, 10, 15, 20], "updates every interval until Kp, then frozen"
    assert pruner.frozen


def test_rigl_drops_the_smallest_active_and_grows_the_largest_gradient_inactive():
    weight = torch.tensor([5.0, -4.0, 3.0, 2.0, -1.0, 0.0, 0.0, 0.0])
    pruned = torch.tensor([False] * 5 + [True] * 3)
    grad = torch.tensor([9.0, 9.0, 9.0, 0.5, -8.0, 7.0, 0.1, 0.2])
    # k = int(0.4 * 5 active) = 2: weights 4 and 3 dropped; among the inactive after the
    # drop, 4 and 5 have the largest |gradient|: 4 is dropped and grown back, 5 is new.
    mask, grown = rigl_exchange(weight, pruned, grad, 0.4)
    assert mask.tolist() == [False, False, False, True, False, False, True, True]
    assert grown.tolist() == [False] * 5 + [True, False, False]


@pytest.mark.parametrize("method", ["rigl", "scratch"])
def test_random_mask_methods_refuse_a_global_scope(method):
    with pytest.raises(IsspError, match="scope must be 'local'"):
        Pruner(Tiny(), method, 0.5, prune_steps=10, scope="global")


def test_distributed_rigl_sums_the_dense_gradients_before_exchanging(tmp_path, monkeypatch):
    monkeypatch.setattr(pruning, "RIGL_INTERVAL", 5)
    *_, alone = run("rigl", 12, 20)
    reduced, all_reduce = [], torch.distributed.all_reduce
    monkeypatch.setattr(
        torch.distributed, "all_reduce", lambda t: (reduced.append(t.shape), all_reduce(t))
    )
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        *_, together = run("rigl", 12, 20)
    finally:
        torch.distributed.destroy_process_group()
    assert len(reduced) == 2 * len(together.weights), "every layer, at steps 5 and 10"
    assert all(torch.equal(alone.masks[n], together.masks[n]) for n in alone.masks)


@pytest.mark.parametrize("steps", [10, 25, 39])
def test_gmp_prunes_along_its_cubic_ramp(steps):
    *_, pruner = run("gmp", steps, 40, ratio=0.9)  # masks updated every 10 steps
    updated = steps // 10 * 10
    fraction = 0.9 * (1 - (1 - updated / 40) ** 3)
    for name, w in pruner.weights.items():
        assert int(pruner.masks[name].sum()) == math.ceil(fraction * w.numel()), name
        assert torch.all(w[pruner.masks[name]] == 0)
