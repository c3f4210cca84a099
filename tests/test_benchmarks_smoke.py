"""Smoke test of benchmarks/bench_parallel.py: its NumPy twin computes fflib's step, its
workers measure both training paths, and it includes the distributed results when present."""
import importlib.util
import json
from pathlib import Path

import pytest

import fflib

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_parallel.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_parallel", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def threads():
    n = fflib.get_num_threads()
    yield
    fflib.set_num_threads(n)


def test_numpy_twin_takes_fflibs_step(bench):
    r = bench.numpy_twin_check([784, 64, 32], B=16, steps=3)
    assert r["loss_rel_diff"] < 1e-5
    assert r["weight_rel_diff"] < 1e-3


@pytest.mark.parametrize("variant", ["fflib_seq", "fflib_pipe"])
def test_mlp_worker_measures_training(bench, variant, threads):
    spec = dict(kind="mlp", variant=variant, sizes=[784, 32, 32, 32], batch=16, threads=2, seconds=0.05,
                warmup=1, data_dir="/nonexistent")     # the shipped MNIST sample
    r = bench.worker_mlp(spec)
    assert r["steps"] >= 3 and r["samples_per_s"] > 0 and r["step_s_min"] <= r["step_s"]


def test_flops_count_forward_and_weight_gradient(bench):
    assert bench.step_flops([784, 10], 4) == 2 * 8 * 784 * 10 * 2


def test_distributed_results_are_included_when_present(bench, tmp_path):
    assert bench.distributed_section(tmp_path) == ([], None)
    data = {"title": "2 ranks", "notes": "measured", "tables": [{"title": "t", "columns": ["nodes", "speed-up"],
                                                                  "rows": [[1, 1.0], [4, 3.25]]}],
            "rows": [{"ranks": 2, "bytes_per_step": 123}]}
    (tmp_path / "bench_distributed.json").write_text(json.dumps(data))
    md, got = bench.distributed_section(tmp_path)
    text = "\n".join(md)
    assert got == data
    assert "| nodes | speed-up |" in text and "| 4 | 3.25 |" in text
    assert "| ranks | bytes_per_step |" in text and "| 2 | 123 |" in text and "measured" in text
