"""FFClassifier as a scikit-learn citizen: the library's own estimator checks, model selection,
pipelines, joblib, pickling, partial_fit, early stopping, and accuracy against
LogisticRegression on tabular data (the appended label keeps every feature)."""
import copy
import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_wine, make_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import (GridSearchCV, StratifiedKFold, cross_val_score,  # noqa: E402
                                     cross_validate)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fflib  # noqa: E402
from fflib import FFClassifier  # noqa: E402

# Checks FF cannot pass, each with the reason (none today: keep this the only place to add one).
EXPECTED_FAILED_CHECKS = {}


def small():
    """A small, fast estimator for the check suite (its problems have <= 300 samples)."""
    return FFClassifier(hidden=(32,), epochs=40, batch_size=32, lr=0.01, random_state=0)


@parametrize_with_checks([small()], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
