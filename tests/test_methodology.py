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
