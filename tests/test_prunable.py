"""Pruning a researcher's own network: which weights, how many, and what is refused."""

import pytest
import torch
from torch import nn

from issp import IsspError
from issp.checkpoint import load_checkpoint, load_state, save_checkpoint
from issp.prunable import prunable_weights, pruned_count
from issp.pruning import Pruner

SPARSE_METHODS = ("issp", "iht", "gmp", "rigl")


def own_net(**layers: nn.Module) -> nn.Sequential:
    """head conv, the given layers, tail conv and a x2 pixel shuffle (head and tail dense)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), *layers.values(), nn.Conv2d(8, 12, 3, padding=1),
        nn.PixelShuffle(2),
    )  # fmt: skip


def train(model: nn.Module, method: str, ratio: float, steps: int = 6, kp: int = 4, **kwargs):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pruner = Pruner(model, method, ratio, prune_steps=kp, alpha=0.5, optimizer=optimizer, **kwargs)
    for _ in range(steps):
        x = torch.rand(2, 3, 6, 6)
        loss = (model(x).mean() - x.mean()).abs()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    return pruner


def zeros(weight: torch.Tensor) -> int:
    return int((weight == 0).sum())


def test_a_frozen_layer_is_left_alone_through_the_whole_run():
    model = own_net(a=nn.Conv2d(8, 8, 3, padding=1), b=nn.Conv2d(8, 8, 3, padding=1))
    model[2].weight.requires_grad_(False)
    before = model[2].weight.clone()
    pruner = train(model, "issp", 0.5)
    assert pruner.names == ["1.weight"]
    assert torch.equal(model[2].weight, before)
    assert zeros(model[1].weight) == 288


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_a_weight_two_layers_share_is_pruned_once_to_the_exact_ratio(method):
    shared = nn.Conv2d(8, 8, 3, padding=1)
    twin = nn.Conv2d(8, 8, 3, padding=1)
    twin.weight = shared.weight
    model = own_net(a=shared, b=twin)
    pruner = train(model, method, 0.5)
    assert pruner.names == ["1.weight"]
    assert zeros(shared.weight) == 288


def test_iss_p_shrinks_a_shared_weight_by_alpha_once_per_step():
    shared = nn.Conv2d(8, 8, 3, padding=1)
    twin = nn.Conv2d(8, 8, 3, padding=1)
    twin.weight = shared.weight
    model = own_net(a=shared, b=twin)
    pruner = Pruner(model, "issp", 0.5, prune_steps=10, alpha=0.5)
    before = shared.weight.detach().clone()
    pruner.step()
    shrunk = pruner.masks["1.weight"]
    torch.testing.assert_close(shared.weight[shrunk], before[shrunk] * 0.5)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_a_small_layer_keeps_a_weight_so_the_output_still_depends_on_the_input(method):
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # 72 weights: ceil(0.99 * 72) = 72
    model = own_net(a=depthwise)
    train(model, method, 0.99)
    assert zeros(depthwise.weight) == 71 == pruned_count(72, 0.99)
    with torch.no_grad():
        assert not torch.equal(model(torch.zeros(1, 3, 6, 6)), model(torch.ones(1, 3, 6, 6)))


def test_pruned_count_is_the_ceiling_below_a_whole_layer():
    assert [pruned_count(2304, r) for r in (0.0, 0.5, 0.9, 0.99)] == [0, 1152, 2074, 2281]
    assert pruned_count(100, 0.99) == 99 and pruned_count(101, 0.99) == 100


def test_a_transposed_conv_upsampler_is_a_conv_the_default_keeps_dense():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
        nn.ConvTranspose2d(8, 8, 3, padding=1), nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1),
    )  # fmt: skip
    assert list(prunable_weights(model)) == ["1.weight", "2.weight"]
    pruner = train(model, "iht", 0.5)
    assert zeros(model[2].weight) == 288 and zeros(model[3].weight) == 0
    assert pruner.pruned_layers() == ["1.weight", "2.weight"]


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize(
    "wrap",
    [nn.utils.parametrizations.weight_norm, nn.utils.weight_norm],
    ids=["parametrizations", "legacy"],
)
def test_a_weight_normed_layer_is_refused_by_name_not_left_dense(wrap):
    model = own_net(a=wrap(nn.Conv2d(8, 8, 3, padding=1)))
    with pytest.raises(IsspError, match="layer 1's weight is recomputed on every forward pass"):
        Pruner(model, "iht", 0.5)
    assert list(prunable_weights(model, skip=["0", "1", "2"])) == []


def test_a_lazy_layer_is_refused_until_its_first_forward_pass():
    model = own_net(a=nn.LazyConv2d(8, 3, padding=1))
    with pytest.raises(IsspError, match="run one forward pass before building the pruner"):
        Pruner(model, "rigl", 0.5)
    model(torch.rand(1, 3, 6, 6))
    assert Pruner(model, "rigl", 0.5).names == ["1.weight"]


def test_a_model_with_nothing_to_prune_is_refused_at_once():
    model = own_net()  # head and tail only: both kept dense
    with pytest.raises(IsspError, match="the model has no layer to prune"):
        Pruner(model, "issp", 0.5, alpha=0.5)


@pytest.mark.parametrize(
    ("skip", "message"),
    [
        ("up", "skip takes a list of layer-name patterns, not the string 'up'"),
        (["0", "taill"], "skip pattern 'taill' matches no conv or linear layer$"),
        (["1"], r"matches no conv or linear layer \(patterns match whole layer names: '1\.\*'"),
    ],
)
def test_a_skip_that_would_be_misread_is_refused(skip, message):
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())  # its conv is "1.0"
    with pytest.raises(IsspError, match=message):
        prunable_weights(own_net(a=block), skip=skip)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": "0.5"}, r"pruning ratio must be a number in \[0, 1\), got '0.5'"),
        ({"ratio": True}, r"pruning ratio must be a number in \[0, 1\), got True"),
        ({"prune_steps": float("nan")}, "prune_steps must be a whole number of steps, got nan"),
        ({"prune_steps": 2.5}, "prune_steps must be a whole number of steps, got 2.5"),
        ({"gmp_interval": 0}, "gmp_interval must be at least 1, got 0"),
        ({"gmp_interval": 2.0}, "gmp_interval must be a whole number of steps, got 2.0"),
    ],
)
def test_arguments_no_run_could_use_are_one_line_errors(kwargs, message):
    model = own_net(a=nn.Conv2d(8, 8, 3, padding=1))
    arguments = {"method": "gmp", "ratio": 0.5, "prune_steps": 4, **kwargs}
    with pytest.raises(IsspError, match=message):
        Pruner(model, **arguments)


def test_an_own_model_s_checkpoint_round_trips_through_load_state(tmp_path):
    model = own_net(a=nn.Conv2d(8, 8, 3, padding=1))
    pruner = train(model, "issp", 0.9)
    path = tmp_path / "mine.safetensors"
    save_checkpoint(path, model, {"preset": "mine", "scale": 2}, pruner.pruned_layers())
    state, meta = load_state(path)
    again = own_net(a=nn.Conv2d(8, 8, 3, padding=1))
    again.load_state_dict(state)
    pairs = zip(model.parameters(), again.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(IsspError, match="not one of issp's presets: load its weights into"):
        load_checkpoint(path)


def test_a_checkpoint_without_its_preset_and_scale_is_not_written(tmp_path):
    model = own_net(a=nn.Conv2d(8, 8, 3, padding=1))
    path = tmp_path / "mine.safetensors"
    with pytest.raises(IsspError, match="checkpoint metadata needs preset and scale"):
        save_checkpoint(path, model, {}, [])
    with pytest.raises(IsspError, match="pruned layer a.weight is not in the model's state_dict"):
        save_checkpoint(path, model, {"preset": "mine", "scale": 2}, ["1.weight", "a.weight"])
    assert not path.exists() and list(tmp_path.iterdir()) == []
