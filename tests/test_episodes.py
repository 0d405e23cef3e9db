"""Episodic few-shot data: Episodes, ClassImages, the samplers, class pools and Omniglot."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from slem.data import (
    ClassImages,
    Episodes,
    EpisodeSampler,
    SinusoidTasks,
    TaskSampler,
    class_pool,
    load_omniglot,
    load_omniglot_runs,
)
from slem.errors import DataNotFoundError, SlemError


@pytest.fixture(scope="module")
def small1(omniglot_dir: Path) -> ClassImages:
    return load_omniglot(omniglot_dir, "small1")


def toy_pool(classes: int = 6, per_class: int = 7, side: int = 4) -> ClassImages:
    """Example ``i`` is the constant image ``i`` (so rows can be recovered from values);
    class ``c`` holds rows ``c, c + classes, ...`` (interleaved, to exercise the index)."""
    n = classes * per_class
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, side, side)
    y = torch.arange(n) % classes
    return ClassImages(x.clone(), y, [f"c{i}" for i in range(classes)], "toy")


def one_line_error(exc: pytest.ExceptionInfo[SlemError]) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, SlemError) and "\n" not in message
    return message


# --- EpisodeSampler ------------------------------------------------------------------------


def test_sampler_shapes_and_class_by_class_layout() -> None:
    sampler = EpisodeSampler(toy_pool(), ways=3, shots=2, queries=4, seed=0)
    batch = sampler.sample(5)
    assert isinstance(sampler, TaskSampler)
    assert batch.tasks == 5 and batch.ways == 3
    assert batch.support_x.shape == (5, 6, 1, 4, 4) and batch.query_x.shape == (5, 12, 1, 4, 4)
    assert batch.support_x.dtype == torch.float32
    assert batch.support_y.dtype == torch.int64 and batch.query_y.dtype == torch.int64
    assert torch.equal(batch.support_y, torch.arange(3).repeat_interleave(2).repeat(5, 1))
    assert torch.equal(batch.query_y, torch.arange(3).repeat_interleave(4).repeat(5, 1))
    assert batch.info["classes"].shape == (5, 3)


def test_each_task_has_distinct_classes_and_disjoint_examples_of_those_classes() -> None:
    pool = toy_pool(classes=8, per_class=6)
    batch = EpisodeSampler(pool, ways=5, shots=2, queries=3, seed=1).sample(40)
    seen_labels = set()
    for b in range(batch.tasks):
        classes = batch.info["classes"][b]
        support, query = batch.info["support_index"][b], batch.info["query_index"][b]
        assert len(set(classes.tolist())) == 5
        assert not set(support.tolist()) & set(query.tolist())
        assert len(set(support.tolist())) == 10 and len(set(query.tolist())) == 15
        assert torch.equal(pool.y[support], classes[batch.support_y[b]])
        assert torch.equal(pool.y[query], classes[batch.query_y[b]])
        assert torch.equal(batch.support_x[b], pool.x[support])  # the images are those rows
        assert torch.equal(batch.query_x[b], pool.x[query])
        seen_labels.add(tuple(classes.tolist()))
    assert len(seen_labels) > 30  # the label assignment is random per task


def test_sampler_seed_determinism_and_independence_from_default_dtype(float64: None) -> None:
    pool = toy_pool()
    a = EpisodeSampler(pool, 3, 1, 2, seed=7).sample(4)
    torch.set_default_dtype(torch.float32)
    b = EpisodeSampler(pool, 3, 1, 2, seed=7).sample(4)
    c = EpisodeSampler(pool, 3, 1, 2, seed=8).sample(4)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.info["support_index"], c.info["support_index"])


@pytest.mark.parametrize(
    "make",
    [lambda s: EpisodeSampler(toy_pool(), 3, 2, 2, seed=s), lambda s: SinusoidTasks(3, 4, seed=s)],
)
def test_state_dict_resume_draws_the_same_next_episodes(make: Callable[[int], TaskSampler]) -> None:
    first = make(0)
    first.sample(3)
    state = first.state_dict()
    expected = first.sample(5)
    resumed = make(123)
    resumed.load_state_dict(state)
    got = resumed.sample(5)
    assert torch.equal(got.support_x, expected.support_x)
    assert torch.equal(got.query_y, expected.query_y)
    state["generator"].zero_()  # state_dict hands out a copy
    assert torch.equal(resumed.sample(2).support_x, first.sample(2).support_x)


def test_sampler_errors() -> None:
    pool = toy_pool(classes=4, per_class=5)
    cases = [
        ({"ways": 1, "shots": 1, "queries": 1}, "ways must be an integer of at least 2"),
        ({"ways": 2, "shots": 0, "queries": 1}, "shots must be a positive integer"),
        ({"ways": 2, "shots": 1, "queries": 0}, "queries must be a positive integer"),
        ({"ways": 5, "shots": 1, "queries": 1}, "has only 4 classes; lower ways"),
        (
            {"ways": 2, "shots": 3, "queries": 3},
            "has only 5 examples; shots + queries must be <= 5",
        ),
    ]
    for kwargs, text in cases:
        with pytest.raises(SlemError) as exc:
            EpisodeSampler(pool, **kwargs)
        assert text in one_line_error(exc)
    sampler = EpisodeSampler(pool, 2, 1, 1)
    with pytest.raises(SlemError) as exc:
        sampler.sample(0)
    assert "tasks must be a positive integer" in one_line_error(exc)
    with pytest.raises(SlemError) as exc:
        sampler.load_state_dict({"rng": torch.zeros(3)})
    assert "expected {'generator'" in one_line_error(exc)


def test_smallest_class_is_named_in_the_error() -> None:
    pool = toy_pool(classes=3, per_class=6).subset([0, 1, 2])
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[torch.nonzero(pool.y == 1).squeeze(1)[:3]] = False
    uneven = ClassImages(pool.x[keep], pool.y[keep], pool.class_names, "uneven")
    assert uneven.per_class_min == 3 and uneven.class_counts.tolist() == [6, 3, 6]
    with pytest.raises(SlemError) as exc:
        EpisodeSampler(uneven, 2, 2, 2)
    assert "class 1 ('c1') of pool 'uneven' has only 3 examples" in one_line_error(exc)
    batch = EpisodeSampler(uneven, 3, 1, 2).sample(20)  # uneven classes sample fine
    for b in range(20):
        rows = torch.cat([batch.info["support_index"][b], batch.info["query_index"][b]])
        assert len(set(rows.tolist())) == 9


# --- Episodes ------------------------------------------------------------------------------


def test_episodes_task_and_to() -> None:
    batch = EpisodeSampler(toy_pool(), 3, 1, 2, seed=0).sample(4)
    one = batch.task(2)
    assert one.tasks == 1 and one.support_x.shape == (1, 3, 1, 4, 4)
    assert torch.equal(one.query_x[0], batch.query_x[2])
    assert torch.equal(one.info["classes"][0], batch.info["classes"][2])
    assert torch.equal(batch.task(-1).support_x[0], batch.support_x[3])
    moved = batch.to("cpu")
    assert torch.equal(moved.support_x, batch.support_x) and moved.ways == 3
    with pytest.raises(SlemError) as exc:
        batch.task(4)
    assert "task index 4 is out of range for 4 tasks" in one_line_error(exc)


def test_episodes_refuse_mismatched_shapes() -> None:
    x, y = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.int64)
    Episodes(x, y, torch.zeros(2, 4, 5), torch.zeros(2, 4, dtype=torch.int64), ways=3)
    bad: Callable[[], Episodes]
    for bad in (
        lambda: Episodes(x, y[:, :2], x, y, ways=3),
        lambda: Episodes(x, y, torch.zeros(3, 3, 5), y, ways=3),
        lambda: Episodes(x, y, x, y, ways=3, info={"a": torch.zeros(5)}),
    ):
        with pytest.raises(SlemError) as exc:
            bad()
        assert "Episodes:" in one_line_error(exc)


# --- ClassImages ---------------------------------------------------------------------------


def test_subset_relabels_in_the_given_order() -> None:
    pool = toy_pool(classes=5, per_class=3)
    sub = pool.subset([4, 1])
    assert sub.classes == 2 and sub.class_names == ["c4", "c1"] and len(sub) == 6
    assert sub.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(pool.y[sub.x[:, 0, 0, 0].long()], torch.tensor([4, 4, 4, 1, 1, 1]))
    for bad in ([], [1, 1], [5], [-1]):
        with pytest.raises(SlemError) as exc:
            pool.subset(bad)
        assert "classes must be distinct ids in 0..4" in one_line_error(exc)


def test_class_images_validation() -> None:
    with pytest.raises(SlemError) as exc:
        ClassImages(np.zeros((3, 2), dtype=np.uint8), np.zeros(3), ["a"], "p")
    assert "x must be a floating (n, *shape) array" in one_line_error(exc)
    with pytest.raises(SlemError) as exc:
        ClassImages(np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=int), ["a"], "p")
    assert "y must be (n,) integer labels" in one_line_error(exc)
    with pytest.raises(SlemError) as exc:
        ClassImages(np.zeros((3, 2), dtype=np.float32), np.array([0, 1, 2]), ["a", "b"], "p")
    assert "labels must lie in 0..1" in one_line_error(exc)


def test_rotations_are_new_classes() -> None:
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 5, 5, generator=rng)
    pool = ClassImages(x, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], "p")
    rotated = pool.with_rotations()
    assert rotated.classes == 12 and len(rotated) == 24 and rotated.shape == (1, 5, 5)
    assert rotated.class_names[:4] == ["a", "b", "c", "a@90"]
    assert rotated.class_names[-1] == "c@270" and rotated.per_class_min == 2
    for j, angle in enumerate((0, 90, 180, 270)):
        rows = torch.nonzero(rotated.y == j * 3 + 1).squeeze(1)  # class "b" at this angle
        expected = torch.rot90(x[2:4], angle // 90, dims=(-2, -1))
        assert torch.equal(rotated.x[rows], expected)
    two = pool.with_rotations((0, 180))
    assert two.classes == 6 and two.class_names[3:] == ["a@180", "b@180", "c@180"]
    flat = ClassImages(torch.zeros(4, 1, 40), torch.tensor([0, 0, 1, 1]), ["a", "b"], "sig")
    with pytest.raises(SlemError) as exc:
        flat.with_rotations()
    assert "rotations need square images" in one_line_error(exc)
    for bad in ((0, 45), (90, 90), ()):
        with pytest.raises(SlemError) as exc:
            pool.with_rotations(bad)
        assert "rotation angles must be distinct values" in one_line_error(exc)


def test_split_classes_is_disjoint_complete_and_seeded() -> None:
    pool = toy_pool(classes=10, per_class=2)
    a, b = pool.split_classes(0.7, seed=3)
    assert a.classes == 7 and b.classes == 3
    assert set(a.class_names).isdisjoint(b.class_names)
    assert set(a.class_names) | set(b.class_names) == set(pool.class_names)
    assert a.class_names == sorted(a.class_names)  # original order kept
    again, _ = pool.split_classes(0.7, seed=3)
    other = {tuple(pool.split_classes(0.7, seed=s)[0].class_names) for s in range(5)}
    assert again.class_names == a.class_names and len(other) > 1
    for fraction in (0.0, 1.0, 0.01, 0.99):
        with pytest.raises(SlemError) as exc:
            pool.split_classes(fraction, seed=0)
        assert "leaves a side empty" in one_line_error(exc)


# --- SinusoidTasks -------------------------------------------------------------------------


def test_sinusoid_targets_follow_the_curve() -> None:
    tasks = SinusoidTasks(shots=5, queries=7, seed=0)
    batch = tasks.sample(64)
    assert batch.ways == 0 and batch.support_x.shape == (64, 5, 1)
    assert batch.query_y.shape == (64, 7, 1) and batch.query_y.dtype == torch.float32
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert amp.shape == (64,) and bool(((amp >= 0.1) & (amp <= 5.0)).all())
    assert bool(((phase >= 0) & (phase <= math.pi)).all())
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert bool(((x >= -5) & (x <= 5)).all())
    for xs, ys in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        expected = amp[:, None, None] * torch.sin(xs - phase[:, None, None])
        assert torch.allclose(ys, expected, atol=1e-6)
        assert torch.allclose(SinusoidTasks.curve(amp, phase, xs), ys, atol=1e-6)
    assert SinusoidTasks.curve(2.0, 0.5, torch.tensor([0.5])).item() == 0.0
    fixed = SinusoidTasks(2, 2, amplitude=(1.0, 1.0), phase=(0.0, 0.0)).sample(3)
    assert torch.allclose(fixed.support_y, torch.sin(fixed.support_x))
    again = SinusoidTasks(shots=5, queries=7, seed=0).sample(64)
    assert torch.equal(again.query_y, batch.query_y)
    assert not torch.equal(SinusoidTasks(5, 7, seed=1).sample(64).query_x, batch.query_x)


def test_sinusoid_errors() -> None:
    for kwargs, text in (
        ({"shots": 0, "queries": 1}, "shots must be a positive integer"),
        ({"shots": 1, "queries": 0}, "queries must be a positive integer"),
        ({"shots": 1, "queries": 1, "amplitude": (5.0, 1.0)}, "amplitude must be (low, high)"),
    ):
        with pytest.raises(SlemError) as exc:
            SinusoidTasks(**kwargs)
        assert text in one_line_error(exc)


# --- class pools ---------------------------------------------------------------------------


def test_class_pool_of_fashion_mnist(tiny_fashion_dir: Path) -> None:
    train = class_pool("fashion-mnist", range(5), data_dir=tiny_fashion_dir)
    test = class_pool("fashion-mnist", [9, 5], split="test", data_dir=tiny_fashion_dir)
    assert train.classes == 5 and len(train) == 100 and train.shape == (1, 28, 28)
    assert train.class_names[0] == "T-shirt/top" and float(train.x.max()) <= 1.0
    assert test.class_names == ["Ankle boot", "Sandal"] and len(test) == 10
    assert set(test.y.tolist()) == {0, 1}
    EpisodeSampler(train, ways=5, shots=1, queries=3).sample(2)
    with pytest.raises(SlemError) as exc:
        class_pool("fashion-mnist", [3, 10], data_dir=tiny_fashion_dir)
    assert "classes must be distinct ids in 0..9" in one_line_error(exc)


def test_class_pool_of_mnist1d_and_errors() -> None:
    pool = class_pool("mnist1d", [5, 6, 7, 8, 9])
    assert pool.classes == 5 and pool.shape == (1, 40) and pool.per_class_min > 500
    with pytest.raises(SlemError) as exc:
        class_pool("mnist2d", [0, 1])
    assert "unknown dataset 'mnist2d'" in one_line_error(exc)
    with pytest.raises(SlemError) as exc:
        class_pool("diabetes", [0])
    assert "is a regression dataset" in one_line_error(exc)
    with pytest.raises(SlemError) as exc:
        class_pool("mnist1d", [0], split="val")
    assert "split must be 'train' or 'test'" in one_line_error(exc)
    with pytest.raises(SlemError) as exc:
        class_pool("iris", [0, 1], split="test")
    assert "has no official test split" in one_line_error(exc)


# --- Omniglot ------------------------------------------------------------------------------


def test_omniglot_small_sets(omniglot_dir: Path, small1: ClassImages) -> None:
    small2 = load_omniglot(omniglot_dir, "small2")
    for pool, classes in ((small1, 136), (small2, 156)):
        assert pool.classes == classes and len(pool) == 20 * classes
        assert pool.class_counts.tolist() == [20] * classes
        assert pool.shape == (1, 28, 28) and pool.x.dtype == torch.float32
        assert float(pool.x.min()) == 0.0 and float(pool.x.max()) == 1.0
        assert float((pool.x == 0).float().mean()) > 0.6  # background 0, ink 1
        assert 0.03 < float(pool.x.mean()) < 0.2
        assert pool.class_names == sorted(pool.class_names)
    assert small1.class_names[0] == "Balinese/character01"
    assert len({n.split("/")[0] for n in small1.class_names}) == 5


def test_omniglot_episodes(small1: ClassImages) -> None:
    train, val = small1.split_classes(0.75, seed=0)
    rotated = train.with_rotations()
    assert rotated.classes == 4 * train.classes and val.classes == 136 - train.classes
    batch = EpisodeSampler(rotated, ways=20, shots=1, queries=5, seed=0).sample(8)
    assert batch.support_x.shape == (8, 20, 1, 28, 28)
    assert batch.query_x.shape == (8, 100, 1, 28, 28)


def test_lake_runs(omniglot_dir: Path) -> None:
    runs = load_omniglot_runs(omniglot_dir)
    assert len(runs) == 20
    correct = 0
    for run in runs:
        assert run.tasks == 1 and run.ways == 20
        assert run.support_x.shape == (1, 20, 1, 28, 28) and run.query_x.shape == (1, 20, 1, 28, 28)
        assert run.support_y.tolist() == [list(range(20))]  # each class once in the support
        assert sorted(run.query_y[0].tolist()) == list(range(20))
        assert sorted(run.info["query_item"][0].tolist()) == list(range(1, 21))
        nearest = torch.cdist(run.query_x[0].flatten(1), run.support_x[0].flatten(1)).argmin(1)
        correct += int((nearest == run.query_y[0]).sum())
    assert correct / 400 > 0.12  # pixel 1-NN is ~21% (chance 5%): the labels line up


def test_run_query_pairs_match_class_labels(omniglot_dir: Path) -> None:
    with zipfile.ZipFile(omniglot_dir / "all_runs.zip") as archive:
        text = archive.read("run01/class_labels.txt").decode()
    pairs = dict(line.split() for line in text.splitlines() if line.strip())
    run = load_omniglot_runs(omniglot_dir, image_size=105)[0]
    assert run.support_x.shape[-1] == 105  # full size: no resizing, binary ink / background
    assert set(run.support_x.unique().tolist()) == {0.0, 1.0}
    items, labels = run.info["query_item"][0].tolist(), run.query_y[0].tolist()
    for item, label in zip(items, labels, strict=True):
        training = pairs[f"run01/test/item{item:02d}.png"]
        assert training == f"run01/training/class{label + 1:02d}.png"


def test_omniglot_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLEM_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as missing_env:
        load_omniglot(None)
    assert "SLEM_DATA is not set; pass --data-dir DIR" in one_line_error(missing_env)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as missing_dir:
        load_omniglot(missing)
    message = one_line_error(missing_dir)
    assert str(missing) in message and "does not exist" in message
    assert "pass --data-dir DIR (the directory holding images_background_small1.zip)" in message
    assert "or set SLEM_DATA" in message
    with pytest.raises(DataNotFoundError) as missing_zip:
        load_omniglot_runs(tmp_path)
    assert f"all_runs.zip not found in {tmp_path}" in one_line_error(missing_zip)
    monkeypatch.setenv("SLEM_DATA", str(missing))
    with pytest.raises(DataNotFoundError) as bad_env:
        load_omniglot(None, "small2")
    assert f"{missing} (SLEM_DATA) does not exist" in one_line_error(bad_env)
    for split in ("evaluation", "small3"):
        with pytest.raises(SlemError) as bad_split:
            load_omniglot(tmp_path, split)
        assert "split must be 'small1' or 'small2'" in one_line_error(bad_split)
    with pytest.raises(SlemError) as bad_size:
        load_omniglot(tmp_path, image_size=0)
    assert "image_size must be a positive number of pixels" in one_line_error(bad_size)


def test_omniglot_from_slem_data_subdirectory(
    omniglot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "all_runs.zip").symlink_to(omniglot_dir / "all_runs.zip")
    monkeypatch.setenv("SLEM_DATA", str(tmp_path))
    assert len(load_omniglot_runs(None, image_size=8)) == 20


def test_damaged_omniglot_zips(tmp_path: Path) -> None:
    (tmp_path / "images_background_small1.zip").write_bytes(b"not a zip at all")
    with pytest.raises(SlemError) as exc:
        load_omniglot(tmp_path)
    assert "is not a readable zip file" in one_line_error(exc)
    with zipfile.ZipFile(tmp_path / "images_background_small2.zip", "w") as archive:
        archive.writestr("images_background_small2/Greek/character01/0394_01.png", b"garbage")
    with pytest.raises(SlemError) as exc:
        load_omniglot(tmp_path, "small2")
    assert "0394_01.png is not a readable image" in one_line_error(exc)
