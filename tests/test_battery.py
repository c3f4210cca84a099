"""The behaviour battery (scripts/battery.py): the block-based C core reproduces, bit for bit,
what the pre-rewrite core computed for a battery of configurations (losses per step, every
parameter and optimiser array after 20 steps, goodness and one-pass probabilities), on 1 thread.

Bitwise only on the CPU the battery was recorded on (OpenBLAS chooses its kernels by CPU and
other kernels round differently); elsewhere the same numbers within float tolerance."""
import sys
from pathlib import Path

import numpy as np
import pytest

import fflib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import battery  # noqa: E402

RECORD = Path(__file__).resolve().parent / "data" / "battery.npz"


@pytest.fixture(scope="module")
def recorded():
    with np.load(RECORD) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def single_thread():
    n = fflib.get_num_threads()
    fflib.set_num_threads(1)
    yield
    fflib.set_num_threads(n)


@pytest.mark.parametrize("name", list(battery.CONFIGS))
def test_battery(name, recorded, single_thread):
    exact = str(recorded["cpu"]) == battery.cpu_signature() and str(recorded["blas"]) == fflib.blas_name()
    out, summary = battery.run_config(name)
    keys = list(recorded[f"{name}/state_keys"])
    assert sorted(summary) == keys, "the model's state arrays changed names"
    for k, v in out.items():
        ref = recorded[f"{name}/{k}"]
        if exact:
            np.testing.assert_array_equal(v, ref, err_msg=f"{name}/{k}")
        else:
            np.testing.assert_allclose(v, ref, rtol=2e-3, atol=2e-4, err_msg=f"{name}/{k}")
    digests = recorded[f"{name}/state_digest"]
    sums = recorded[f"{name}/state_sums"]
    for i, k in enumerate(keys):
        if exact:
            assert summary[k][0] == digests[i], f"{name}: {k} differs from the recorded bits"
        else:
            np.testing.assert_allclose(summary[k][1:], sums[i], rtol=5e-3, atol=1e-3, err_msg=f"{name}: {k}")
