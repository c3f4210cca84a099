"""The test harness's own logic (tests/conftest.py): how the suite shares the machine under
pytest-xdist (``pytest -n auto --dist worksteal``, the README's test command)."""
import types

import pytest

import conftest


class Item:
    def __init__(self, name, seconds=None):
        self.name = name
        self.mark = None if seconds is None else types.SimpleNamespace(kwargs={"seconds": seconds})

    def get_closest_marker(self, name):
        return self.mark if name == "slow" else None

    def __repr__(self):
        return self.name


def order(monkeypatch, items, workers, worker="gw0"):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    if worker:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    else:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    items = list(items)
    conftest.pytest_collection_modifyitems(None, items)
    return [i.name for i in items]


def suite():
    light = [Item(f"t{i}") for i in range(20)]
    # in file order the two longest sit side by side, as the MNIST CNN and CwComp tests do
    return light[:8] + [Item("mlp", 30), Item("cnn", 800), Item("cwc", 530), Item("scff", 110)] + light[8:]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_worker_slice_starts_with_its_share_of_the_long_tests(monkeypatch, workers):
    items = suite()
    got = order(monkeypatch, items, workers)
    assert sorted(got) == sorted(i.name for i in items)           # a permutation
    # xdist's worksteal hands worker k the k-th contiguous slice: 1/N of what is left, in turn
    starts, left, pos = [], len(got), 0
    for k in range(workers):
        starts.append(pos)
        n = left // (workers - k)
        pos, left = pos + n, left - n
    assert got[starts[0]] == "cnn" and got[starts[1]] == "cwc"   # never one after the other
    heavy = {"cnn", "cwc", "scff", "mlp"}
    light_order = [n for n in got if n not in heavy]
    assert light_order == [f"t{i}" for i in range(20)]             # the rest keep their file order
    if workers >= 3:
        assert got[starts[2]] == "scff"


def test_without_xdist_the_order_is_the_file_order(monkeypatch):
    items = suite()
    assert order(monkeypatch, items, 2, worker=None) == [i.name for i in items]
    assert order(monkeypatch, items, 1) == [i.name for i in items]
