"""The cell search space of architecture search (:mod:`slem.methodology.architecture`): genotypes
in NAS-Bench-201's string form and as ``architecture.json``, the cell networks (discrete and
supernet, 1-D and 2-D), partial channels, and the architecture-mixing methodology."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from slem.errors import SlemError
from slem.methodology import load_methodology
from slem.methodology.architecture import (
    DEFAULT_OPERATIONS,
    ArchitectureMixing,
    CellNetwork,
    CellSpace,
    Genotype,
    MixedOp,
    resolve_genotype,
)

NB201_EXAMPLE = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
    "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
)

# ------------------------------------------------------------------ space and genotypes


def test_space_size_edges_and_every_genotype() -> None:
    space = CellSpace()
    assert space.edges == [(0, 1), (0, 2), (1, 2)]
    assert space.edge_names == ["edge_0_1", "edge_0_2", "edge_1_2"]
    every = list(space.genotypes())
    assert space.size == len(every) == 125
    assert len({g.ops for g in every}) == 125
    assert every[0].ops == ("none",) * 3 and every[-1].ops == ("avg_pool_3",) * 3
    four = CellSpace(4)
    assert four.edges == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert four.size == 5**6 == 15625
    assert CellSpace(2, ("skip_connect", "conv_3")).size == 2


@pytest.mark.parametrize(
    ("nodes", "ops"),
    [
        (3, ("conv_3", "skip_connect", "avg_pool_3")),
        (3, ("none", "none", "conv_1")),
        (4, ("conv_3", "conv_3", "avg_pool_3", "skip_connect", "conv_3", "skip_connect")),
    ],
)
def test_string_form_round_trip(nodes: int, ops: tuple[str, ...]) -> None:
    genotype = Genotype(CellSpace(nodes), ops)
    text = str(genotype)
    assert text.count("+") == nodes - 2 and text.count("~") == len(ops)
    assert Genotype.parse(text) == genotype
    assert resolve_genotype(text) == genotype


def test_nasbench201_string_is_the_four_node_form_in_other_names() -> None:
    with pytest.raises(SlemError) as info:
        Genotype.parse(NB201_EXAMPLE)
    message = str(info.value)
    assert "nor_conv_3x3" in message and "avg_pool_3x3" in message
    assert "nor_conv_3x3 is conv_3" in message  # the rename that makes it slem's
    assert message.count("nor_conv_3x3") == 2  # named once, then in the hint
    renamed = NB201_EXAMPLE.replace("nor_conv_3x3", "conv_3").replace("avg_pool_3x3", "avg_pool_3")
    genotype = Genotype.parse(renamed)
    assert genotype.space.nodes == 4 and str(genotype) == renamed
    assert genotype.ops == (
        "conv_3",
        "conv_3",
        "avg_pool_3",
        "skip_connect",
        "conv_3",
        "skip_connect",
    )
    assert genotype.skip_share == pytest.approx(2 / 6)


def test_parse_takes_operations_outside_the_default_space() -> None:
    genotype = Genotype.parse("|max_pool_3~0|+|conv_5~0|skip_connect~1|")
    assert genotype.ops == ("max_pool_3", "conv_5", "skip_connect")
    assert set(genotype.space.operations) > set(DEFAULT_OPERATIONS)
    narrow = Genotype.parse("|conv_3~0|", operations=("conv_3", "skip_connect"))
    assert narrow.space == CellSpace(2, ("conv_3", "skip_connect"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "conv_3",
        "|conv_3|",
        "|conv_3~0|+|conv_3~1|",  # node 2 misses its input 0
        "|conv_3~0|+|conv_3~1|conv_3~0|",  # inputs out of order
        "|conv_3~0|+|conv_3~0|conv_3~1|+",  # an empty last node
        "|conv_3~1|",
    ],
)
def test_malformed_strings_are_refused(text: str) -> None:
    with pytest.raises(SlemError, match="must list its inputs"):
        Genotype.parse(text)


def test_wrong_operation_count_and_unknown_operations() -> None:
    with pytest.raises(SlemError, match="3-node cell has 3 edges, got 2 operations"):
        Genotype(CellSpace(), ("conv_3", "conv_3"))
    with pytest.raises(SlemError, match=r"operation\(s\) skip are not in the space"):
        Genotype.parse("|conv_3~0|+|skip~0|conv_3~1|")
    with pytest.raises(SlemError, match="not in the space"):
        Genotype(CellSpace(3, ("conv_3", "skip_connect")), ("conv_3", "conv_1", "conv_3"))
    with pytest.raises(SlemError, match="unknown operation"):
        CellSpace(3, ("conv_3", "conv_7"))
    with pytest.raises(SlemError, match="at least 2 distinct"):
        CellSpace(3, ("conv_3", "conv_3"))
    with pytest.raises(SlemError, match="at least 2 nodes"):
        CellSpace(1)
    with pytest.raises(SlemError, match="no operation for edge_1_2"):
        CellSpace().genotype({"edge_0_1": "conv_3", "edge_0_2": "conv_3"})


def test_save_and_load_architecture_json(tmp_path: Path) -> None:
    genotype = Genotype(
        CellSpace(4), ("conv_1", "none", "skip_connect", "conv_3", "avg_pool_3", "conv_3")
    )
    path = genotype.save(tmp_path, found_by="test", score=1.5)
    assert path == tmp_path / "architecture.json"
    data = json.loads(path.read_text())
    assert data["genotype"] == str(genotype) and data["found_by"] == "test" and data["score"] == 1.5
    assert data["nodes"] == 4 and data["operations"] == list(DEFAULT_OPERATIONS)
    assert Genotype.load(tmp_path) == Genotype.load(path) == genotype
    assert resolve_genotype(str(tmp_path)) == resolve_genotype(str(path)) == genotype
    named = genotype.save(tmp_path / "cell.json")
    assert named.name == "cell.json" and Genotype.load(named) == genotype
    assert Genotype.from_dict(genotype.to_dict()) == genotype


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SlemError, match="not found"):
        Genotype.load(tmp_path / "missing.json")
    with pytest.raises(SlemError, match="not found"):
        Genotype.load(tmp_path)  # a directory without architecture.json
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SlemError, match="cannot read"):
        Genotype.load(broken)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"nodes": 3, "operations": list(DEFAULT_OPERATIONS)}))
    with pytest.raises(SlemError, match="not a cell architecture"):
        Genotype.load(partial)
    bad_op = tmp_path / "bad_op.json"
    bad_op.write_text(json.dumps({"nodes": 2, "operations": ["conv_3", "none"], "ops": ["x"]}))
    with pytest.raises(SlemError, match="not in the space"):
        Genotype.load(bad_op)
    with pytest.raises(SlemError) as info:
        resolve_genotype(str(tmp_path / "nothing"))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("discrete", [True, False])
def test_cell_network_output_shapes(dims: int, discrete: bool) -> None:
    torch.manual_seed(0)
    space = CellSpace()
    genotype = Genotype(space, ("conv_3", "avg_pool_3", "skip_connect")) if discrete else None
    net = CellNetwork(
        3, 7, space=space, genotype=genotype, channels=8, cells=2, stages=2, dims=dims
    )
    x = torch.randn(5, 3, *([12] * dims))
    weights = None if discrete else torch.softmax(torch.randn(3, 5), dim=1)
    out = net(x, weights)
    assert out.shape == (5, 7)
    assert sum(isinstance(b, nn.Module) and type(b).__name__ == "Cell" for b in net.blocks) == 4
    assert net.classifier.in_features == 16  # the channels doubled once
    assert torch.isfinite(out).all()
    if not discrete:
        with pytest.raises(SlemError, match="needs mixing weights"):
            net(x)
        aux = net(x, weights, aux_skip=0.5)
        assert aux.shape == (5, 7) and not torch.allclose(aux, out)


def test_cell_network_refuses_bad_sizes() -> None:
    with pytest.raises(SlemError, match="dims=3"):
        CellNetwork(1, 2, dims=3)
    with pytest.raises(SlemError, match="must be >= 1"):
        CellNetwork(1, 2, channels=0)


def _discrete_state(supernet: CellNetwork, genotype: Genotype) -> dict[str, torch.Tensor]:
    """The supernet's state dict renamed to the discrete network's: the edge's module is the
    ``k``-th operation of the supernet's mixed edge (``edges.E.ops.K.`` -> ``edges.E.``)."""
    state = {}
    index = {e: supernet.space.operations.index(op) for e, op in enumerate(genotype.ops)}
    for name, value in supernet.state_dict().items():
        match = re.search(r"edges\.(\d+)\.ops\.(\d+)\.", name)
        if match is None:
            state[name] = value
        elif int(match.group(2)) == index[int(match.group(1))]:
            state[name.replace(match.group(0), f"edges.{match.group(1)}.")] = value
    return state


@pytest.mark.parametrize(
    "ops",
    [
        ("conv_3", "conv_1", "conv_3"),
        ("none", "skip_connect", "avg_pool_3"),
        ("conv_1", "none", "conv_3"),
    ],
)
@pytest.mark.parametrize("dims", [1, 2])
def test_discrete_network_is_the_supernet_at_one_hot_weights(
    ops: tuple[str, ...], dims: int
) -> None:
    torch.manual_seed(1)
    space = CellSpace()
    genotype = Genotype(space, ops)
    supernet = CellNetwork(2, 4, space=space, channels=6, cells=1, stages=2, dims=dims)
    discrete = CellNetwork(2, 4, genotype=genotype, channels=6, cells=1, stages=2, dims=dims)
    with torch.no_grad():  # BatchNorm's affine (identity at init) is the discrete cell's extra
        for m in discrete.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    missing, unexpected = discrete.load_state_dict(
        _discrete_state(supernet, genotype), strict=False
    )
    assert unexpected == []
    # what the supernet lacks: only the affine parameters of the cells' BatchNorms, reset here
    assert all(re.search(r"blocks\.\d+\.edges\.\d+\.\d+\.(weight|bias)$", k) for k in missing)
    with torch.no_grad():
        for name in missing:
            discrete.get_parameter(name).fill_(1.0 if name.endswith("weight") else 0.0)
    one_hot = torch.zeros(3, 5)
    for e, op in enumerate(ops):
        one_hot[e, space.operations.index(op)] = 1.0
    x = torch.randn(6, 2, *([8] * dims))
    for mode in ("train", "eval"):
        supernet.train(mode == "train")
        discrete.train(mode == "train")
        torch.testing.assert_close(discrete(x), supernet(x, one_hot), rtol=1e-5, atol=1e-6)
    # and the supernet at another weighting is another function
    other = torch.roll(one_hot, 1, dims=1)
    assert not torch.allclose(supernet(x, other), supernet(x, one_hot), atol=1e-4)


def test_a_cell_of_none_edges_gives_a_constant_output() -> None:
    torch.manual_seed(0)
    genotype = Genotype(CellSpace(), ("none", "none", "none"))
    net = CellNetwork(1, 3, genotype=genotype, channels=4, stages=2)
    out = net(torch.randn(8, 1, 16))
    torch.testing.assert_close(out, net.classifier.bias.detach().expand(8, 3))
    live = CellNetwork(1, 3, genotype=Genotype(CellSpace(), ("none", "conv_3", "none")), channels=4)
    varied = live(torch.randn(8, 1, 16)).detach()
    assert float(varied.std(dim=0).max()) > 1e-4


@pytest.mark.parametrize("dims", [1, 2])
def test_partial_channels_mix_one_part_and_pass_the_rest_through(dims: int) -> None:
    torch.manual_seed(0)
    channels, k = 8, 4
    op = MixedOp(channels, DEFAULT_OPERATIONS, dims, partial_channels=k)
    assert all(
        m.in_channels == channels // k for m in op.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)
    )
    x = torch.randn(3, channels, *([6] * dims))
    weights = torch.softmax(torch.randn(5), dim=0)
    out = op(x, weights)
    assert out.shape == x.shape
    # undo the channel shuffle: output channel i * k + g is the mixed map's channel g * C/k + i
    width = channels // k
    unshuffled = out.reshape(3, width, k, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(unshuffled[:, width:], x[:, width:], rtol=0, atol=0)
    mixed = sum(
        w * m(x[:, :width])
        for name, w, m in zip(op.names, weights, op.ops, strict=True)
        if name != "none"
    )
    torch.testing.assert_close(unshuffled[:, :width], mixed)
    assert not torch.allclose(unshuffled[:, :width], x[:, :width])
    # one-hot on skip_connect: the output is a permutation of the input's channels
    skip = torch.zeros(5)
    skip[DEFAULT_OPERATIONS.index("skip_connect")] = 1.0
    shuffled = op(x, skip)
    assert sorted(shuffled.flatten(2).sum(2)[0].tolist()) == sorted(x.flatten(2).sum(2)[0].tolist())
    full = MixedOp(channels, DEFAULT_OPERATIONS, dims)
    torch.testing.assert_close(full(x, skip), x)


def test_partial_channels_must_divide_the_channels() -> None:
    with pytest.raises(SlemError, match="must divide"):
        MixedOp(6, DEFAULT_OPERATIONS, 1, partial_channels=4)
    with pytest.raises(SlemError, match="must divide"):
        CellNetwork(1, 2, channels=6, partial_channels=4)


# ------------------------------------------------------------------ the methodology


def test_mixing_weights_and_the_derived_genotype_exclude_none() -> None:
    torch.manual_seed(0)
    mixing = ArchitectureMixing()
    weights = mixing()
    assert weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    with torch.no_grad():
        mixing.alpha.copy_(
            torch.tensor(
                [
                    [5.0, 1.0, 2.0, 0.0, 0.0],  # none strongest, then conv_1
                    [5.0, 0.0, 0.0, 0.0, 3.0],  # none strongest, then avg_pool_3
                    [0.0, 4.0, 0.0, 1.0, 0.0],  # skip_connect
                ]
            )
        )
    assert mixing.genotype().ops == ("conv_1", "avg_pool_3", "skip_connect")
    with_none = ArchitectureMixing(exclude=())
    with torch.no_grad():
        with_none.alpha.copy_(mixing.alpha)
    assert with_none.genotype().ops == ("none", "none", "skip_connect")
    hot = ArchitectureMixing(temperature=0.1)
    with torch.no_grad():
        hot.alpha.copy_(mixing.alpha)
    assert float(hot().detach()[0, 0]) > float(mixing().detach()[0, 0]) > 0.5
    # a given alpha (the bilevel problem's hyperparameter) is differentiated through
    alpha = torch.zeros(3, 5, requires_grad=True)
    mixing(alpha)[0, 2].backward()
    assert float(alpha.grad.abs().sum()) > 0 and float(
        mixing(alpha.detach())[0, 0]
    ) == pytest.approx(0.2)


def test_mixing_refuses_bad_settings() -> None:
    with pytest.raises(SlemError, match="temperature"):
        ArchitectureMixing(temperature=0.0)
    with pytest.raises(SlemError, match="no operation"):
        ArchitectureMixing(operations=("none", "skip_connect"), exclude=("none", "skip_connect"))


def test_mixing_artifact_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    mixing = ArchitectureMixing(4, ("none", "skip_connect", "conv_3", "max_pool_3"), 0.5)
    with torch.no_grad():
        mixing.alpha.normal_()
    mixing.save(tmp_path / "art", note="test")
    loaded, info = load_methodology(tmp_path / "art")
    assert isinstance(loaded, ArchitectureMixing) and info["kind"] == "architecture_mixing"
    assert loaded.config() == mixing.config()
    torch.testing.assert_close(loaded.alpha, mixing.alpha)
    torch.testing.assert_close(loaded(), mixing())
    assert loaded.genotype() == mixing.genotype()
    assert loaded.genotype().space.nodes == 4
