"""Weighting methodologies: vectorized heads, self-describing artifacts, clear load errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slem.errors import SlemError
from slem.methodology import CMWNet, CMWNetSL, MWNet, load_methodology


def test_mwnet_shape_and_range() -> None:
    torch.manual_seed(0)
    w = MWNet()(torch.rand(50) * 5).detach()
    assert w.shape == (50,) and float(w.min()) > 0 and float(w.max()) < 1


def test_cmwnet_heads_are_vectorized_and_per_group() -> None:
    torch.manual_seed(0)
    net = CMWNet(n_groups=3, hidden=16)
    losses, groups = torch.rand(30) * 4, torch.randint(0, 3, (30,))
    w = net(losses, groups)
    h = net.trunk(losses[:, None])
    for i in range(30):  # the per-sample loop the vectorized form replaces
        g = int(groups[i])
        ref = torch.sigmoid(h[i] @ net.head_weight[g] + net.head_bias[g])
        torch.testing.assert_close(w[i], ref)
    same_loss = torch.full((3,), 1.0)
    assert len(set(net(same_loss, torch.arange(3)).tolist())) == 3  # groups differ


@pytest.mark.parametrize("cls", [MWNet, CMWNet])
def test_monotone_weights_never_increase_with_the_loss(cls: type, tmp_path: Path) -> None:
    """Whatever the parameters (here random, as after meta-training), a monotone
    net's weight is non-increasing in the loss, for every group; the flag survives an
    artifact round trip, and an artifact saved without it loads as unconstrained."""
    net = cls(monotone=True) if cls is MWNet else cls(n_groups=3, hidden=16, monotone=True)
    free = cls() if cls is MWNet else cls(n_groups=3, hidden=16)
    losses = torch.linspace(0, 8, 400)
    free_rises = []
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.5)
        free.load_state_dict(net.state_dict())
        for g in range(net.n_groups):
            w = net(losses, torch.full((400,), g)).detach()
            assert float((w[1:] - w[:-1]).max()) <= 1e-6
            w_free = free(losses, torch.full((400,), g)).detach()
            free_rises.append(float((w_free[1:] - w_free[:-1]).max()) > 1e-3)
    assert any(free_rises)  # the same parameters without the constraint do rise
    loaded, _ = load_methodology(net.save(tmp_path / "m"))
    assert loaded.monotone
    torch.testing.assert_close(loaded(losses), net(losses))
    meta_path = free.save(tmp_path / "old") / "methodology.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["monotone"]  # as written before the option existed
    meta_path.write_text(json.dumps(meta))
    assert not load_methodology(tmp_path / "old")[0].monotone


@pytest.mark.parametrize("cls", [MWNet, CMWNet, CMWNetSL])
def test_artifact_round_trip(cls: type, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = cls() if cls is MWNet else cls(n_groups=2, hidden=8)
    path = net.save(
        tmp_path / "art", meta_trained_on={"dataset": "mnist1d"}, class_groups=[0, 1, 1]
    )
    loaded, meta = load_methodology(path)
    losses, groups = torch.rand(10), torch.randint(0, 2, (10,))
    torch.testing.assert_close(loaded(losses, groups), net(losses, groups))
    assert meta["kind"] == net.kind and meta["meta_trained_on"]["dataset"] == "mnist1d"
    assert meta["class_groups"] == [0, 1, 1] and meta["slem_version"]
    assert meta["input_features"][0] == "loss"
    assert (tmp_path / "art" / "methodology.safetensors").is_file()


def test_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(SlemError, match="not a methodology artifact"):
        load_methodology(tmp_path)
    path = MWNet().save(tmp_path / "a")
    meta = json.loads((path / "methodology.json").read_text())
    meta["kind"] = "teleporter"
    (path / "methodology.json").write_text(json.dumps(meta))
    with pytest.raises(SlemError, match="unknown methodology kind 'teleporter'"):
        load_methodology(path)
    meta["kind"], meta["config"] = "mwnet", {"hidden": 7}
    (path / "methodology.json").write_text(json.dumps(meta))
    with pytest.raises(SlemError, match="does not match its JSON config"):
        load_methodology(path)
