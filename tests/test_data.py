import numpy as np
import pytest

from aiopt.data import load_dataset, load_npz
from aiopt.errors import InputError


def test_mnist1d_has_the_published_split():
    data = load_dataset("mnist1d")
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert set(np.unique(data.y_test)) == set(range(10))


def test_mnist1d_generation_keeps_global_random_state():
    from aiopt.data import _generate_mnist1d

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    _generate_mnist1d()
    assert np.random.rand() == expected


def test_digits_split_is_fixed_and_stratified():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert first.x_train.shape[1:] == (8, 8)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    train_share = np.bincount(first.y_train) / len(first.y_train)
    test_share = np.bincount(first.y_test) / len(first.y_test)
    assert np.abs(train_share - test_share).max() < 0.01


def test_unknown_dataset():
    with pytest.raises(InputError, match="known: mnist1d, digits"):
        load_dataset("imagenet")


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_round_trip(tmp_path):
    path = _npz(tmp_path, x=np.zeros((5, 40), np.float32), y=np.arange(5))
    inputs, labels = load_npz(path)
    assert inputs["x"].shape == (5, 40) and labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.arange(3)}, "no array named x"),
        ({"x": np.zeros((3, 40))}, "no labels array 'y'"),
        ({"x": np.zeros((3, 40)), "y": np.arange(4)}, "different lengths"),
        ({"x": np.zeros((0, 40)), "y": np.zeros(0, np.int64)}, "is empty"),
        ({"x": np.zeros((3, 40)), "y": np.array([0.5, 1.0, 2.0])}, "integer array"),
        ({"x": np.array(["a", "b", "c"]), "y": np.arange(3)}, "numeric dtype"),
    ],
    ids=["no-x", "no-y", "mismatched", "empty", "float-labels", "strings"],
)
def test_bad_npz_is_refused(tmp_path, arrays, message):
    with pytest.raises(InputError, match=message):
        load_npz(_npz(tmp_path, **arrays))


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    path = _npz(tmp_path, x=np.array([object(), object()], dtype=object), y=np.arange(2))
    with pytest.raises(InputError, match="pickle"):
        load_npz(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_npz(path)
    with pytest.raises(InputError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")


def test_single_input_model_may_use_x(tmp_path):
    path = _npz(tmp_path, x=np.zeros((2, 40), np.float32), y=np.arange(2))
    inputs, _ = load_npz(path, input_names=("signal",))
    assert list(inputs) == ["signal"]
