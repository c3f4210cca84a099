"""A scikit-learn estimator around an FF MLP or one of fflib's zoo CNNs (scikit-learn itself is needed to use it)."""
import math

import numpy as np

from .models import GROUP_MODELS, zoo_model
from .nn import FFModel, _real, as_array, default_threshold, mlp
from .optim import Adam, AdamW, SGD, LinearCooldown, MultiStepLR
from .train import evaluate, fit
from .unsupervised import METHODS as _LABEL_FREE

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.model_selection import train_test_split
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import validate_data
    _SKLEARN_ERROR = None
except ImportError as e:  # keep `import fflib` working; the estimator says what it needs when used
    _SKLEARN_ERROR = e

    class BaseEstimator:
        pass

    class ClassifierMixin:
        pass

    class NotFittedError(ValueError, AttributeError):
        pass

#: the training methods (``method=``): FF with labels, and the label-free ones of :mod:`fflib.unsupervised`
METHODS = ("ff",) + tuple(_LABEL_FREE) + ("uff",)

#: the ``loss`` parameter's default (method "uff" takes no other)
_DEFAULT_LOSS = "symba"

#: the networks the estimator builds (``architecture=``): fflib's zoo (:func:`fflib.models.zoo_model`)
ARCHITECTURES = ("mlp", "cnn") + GROUP_MODELS

#: the losses of the channel-group CNNs (``architecture`` "cwcomp" or a light model); the ``loss``
#: default means "cwc" there
CWCOMP_LOSSES = ("cwc", "pvn", "df-cwc")

#: minibatch updates that ``epochs="auto"`` guarantees (10 epochs of MNIST are 6,000)
AUTO_MIN_UPDATES = 1000


class FFNotFittedError(NotFittedError, RuntimeError):
    """Raised when an unfitted FFClassifier predicts: scikit-learn's NotFittedError, and a
    RuntimeError as in fflib 0.1."""


def _need_sklearn():
    if _SKLEARN_ERROR is not None:
        raise ImportError(f"FFClassifier needs scikit-learn (pip install scikit-learn): {_SKLEARN_ERROR}")


class FFClassifier(ClassifierMixin, BaseEstimator):
    """Forward-Forward classifier, an MLP or (``architecture=``) one of fflib's CNNs for images:
    the survey's original FF CNN, the CwComp CNN or a light model; a scikit-learn estimator
    (``clone``, pipelines, grid search, ``cross_val_score``, pickling, ``check_estimator`` all work).

    Parameters
    ----------
    hidden : tuple of int
        Hidden layer sizes (the survey's MNIST network is (500, 100)); the MLP's only.
    architecture : {"mlp", "cnn", "cwcomp", "ff_tiny", "ff_small", "ff_medium", "ff_optimal", "ff_deep"}
        "mlp" (default): an FF MLP with the label in the input.  "cnn": the survey's original
        FF CNN (:func:`fflib.models.mnist_cnn` for 1x28x28 images, :func:`fflib.models.cifar10_cnn`
        for 3x32x32; a learned label channel, ``loss`` "symba" by default, ``goodness``,
        ``norm``, ``threshold`` (default 1) and ``negatives`` as for the MLP); fflib's MNIST CNN
        recipe trains it with ``head_lr=0.006``, ``augment="crop2"``, ``negatives="hard"``.
        The light models (the survey's Table III, :func:`fflib.models.light_model`) train like
        "cwcomp" below on images of any size their pooling allows (fflib's CIFAR-10 FF_small
        recipe: ``lr=0.01``, ``batch_size=128``, ``augment="crop4+flip"``, ``milestones``).
        "cwcomp": the CwComp CNN
        (Papachristodoulou et al. 2024, :func:`fflib.models.cwcomp`: four 3x3 conv blocks, the
        second and fourth grouped one group per class, 2x2 pooling after them, batch norm
        closing each block; no label in the input) for images: X as images (n, C, H, W) or
        (n, H, W), or flat with ``image_shape``; H and W at least 4.  Its ``loss`` is the CwC
        loss (the default ``loss`` means "cwc"; "pvn" and "df-cwc" also), its one-pass head
        reads the last two blocks at ``head_lr`` (default ``lr`` / 10: at the blocks' rate the
        head's thousands of inputs make it diverge), and ``predict`` with
        ``inference="multipass"`` takes the class whose channel group is most active summed
        over the blocks.  fflib's MNIST CwComp recipe (0.75 / 0.94 % test error) trains it
        with ``lr=0.01``, ``batch_size=128``, ``augment="crop2"``; method "ff" only.
    channels : None or tuple of ints
        The widths of a channel-group CNN's blocks ("cwcomp": 4, a light model: one per block;
        None, the default: the paper's, e.g. CwComp's (20, 80, 240, 480)), each rounded up to a
        multiple of the number of classes (one channel group per class) for "cwcomp" and under
        the channel-group losses.
    augment : None or str
        Image augmentation of every training minibatch (:mod:`fflib.augment`, e.g. "crop2"),
        for an image model (a CNN ``architecture``, or a label-free method with
        ``image_shape``).
    epochs : int or "auto"
        Training epochs; "auto" (the default) is 10 epochs, or more on small data sets: as
        many as give at least 1,000 minibatch updates (``AUTO_MIN_UPDATES``), e.g. 500 epochs
        of 2 minibatches on the 178 wine samples.  MNIST (600 minibatches an epoch) gets 10.
        With ``early_stopping`` it is the maximum.
    batch_size, lr : minibatch size and learning rate.
    threshold : float
        theta of the FF loss (default 1 per unit for mean goodness, the first layer's width
        for sum goodness, minus that for "neg-mean" / "neg-sum"); goodness, norm, loss as in
        :class:`FFModel`.  The defaults (SymBa, mean goodness, RMS normalisation, Adam 3e-3
        with a linear cooldown, appended label) reach 2.20 % one-pass / 2.28 % multi-pass
        test error on MNIST in 10 epochs (784-500-100, random_state=0, measured).
    label_placement : {"append", "overwrite"}
        "append" (default) gives the network K extra inputs for the one-hot label, so every
        feature is kept (tabular data); "overwrite" writes the label over the first K features
        (Hinton's MNIST recipe; needs at least K features).  With the defaults on standardised
        tabular data (5-fold CV, measured): wine 97.7 % against LogisticRegression's 98.3 %;
        make_classification (1,000 samples, 20 features, 5 informative and first, 3 classes)
        76.6 % against 73.9 %.  On tiny noisy sets the (500, 100) network overfits
        (make_classification's 100-sample default, 3 seeds: 83.0 % against 88.3 %); ``weight_decay=1e-2``
        closed that gap there (89.3 % with hidden=(100,)) but is not the default: 1e-3 already
        cost 3 points on the MNIST sample.
    optimizer : {"adam", "adamw", "sgd"}; momentum and weight_decay for it (L2 in the
        gradient for "adam" and "sgd", decoupled for "adamw": :class:`fflib.AdamW`; the
        default 0 holds for "adamw" too, so set it: PyTorch's AdamW default is 0.01).
    milestones, gamma : MultiStepLR schedule (epochs); cooldown : linear cooldown over the
        second half instead.
    order : "simultaneous" or "layerwise"; negatives : "uniform" or "hard".
    margin : float
        The DF loss's margin (``loss="df"``, Wu et al. 2024; default 1.0, unused by the other losses).
    block_thresholds : None or one threshold per hidden layer
        Each block's own FF threshold instead of ``threshold`` (e.g. SCFF's ``(4, 1)``).
    head_dropout : float in [0, 1)
        Dropout on the one-pass head's input while it trains (e.g. a label-free method's probe).
    block_decay : float in (0, 1]
        A label-free method's schedule: the blocks' rate times ``block_decay`` after every
        label-free epoch, then the probe from its full rate cooled linearly to 0
        (:class:`fflib.LinearCooldown`'s ``decay``; the SCFF recipe's 0.944).  1 (default):
        the cooldown over the second half of all epochs.
    standardize : bool
        Standardise every feature by the training data's mean and standard deviation (a
        constant feature: by 1) inside the model (:attr:`FFModel.input_norm`: saved, pickled
        and exported with it), as a StandardScaler in front would (partial_fit: by its first
        call's data); method "ff" only.
    method : {"ff", "scff", "hybrid", "uff"}
        "ff" (default): labels in the input.  "scff" (self-contrastive pairs, Chen et al. 2025)
        or "hybrid" (Hinton's hybrid-image negatives): ``epochs`` of label-free training (the
        loss "ff" or "symba"), then a linear probe -- the one-pass head on every block's
        features -- for ``head_epochs`` epochs (0, the default, means as many as ``epochs``),
        through :func:`fflib.fit`'s ``method=``.  "uff": the blocks are autoencoder cells
        (:func:`fflib.uff.uff_model`, Hwang et al.; their loss is the reconstruction "ae",
        so ``loss`` must be left at its default), then the same probe.  Label-free training
        takes the default ``negatives`` and ``inference``, and no ``early_stopping``.
    image_shape : (C, H, W) or None
        The image shape of the flattened samples, needed by ``method="hybrid"`` (it mixes
        images) and the CNN ``architecture``s (the MLP reads flat samples); None takes
        the shape of X when fit is given images (n, C, H, W) or (n, H, W).
    inference : "onepass" or "multipass" for :meth:`predict`.
    early_exit : None or float
        Early-exit inference (LightFF, Aminifar et al. 2024; see :mod:`fflib.early_exit`): fit
        holds out ``validation_fraction`` of the training data (stratified; the same split as
        ``early_stopping``) and calibrates per-block exit thresholds on it: the fewest blocks
        on average with at most ``early_exit`` (a fraction: 0.002 = 0.2 percentage points) of
        the split answered wrong by early exit and right without it (the accuracy lost is at
        most that; see :func:`fflib.early_exit.calibrate`);
        :meth:`predict` and :meth:`predict_proba` then stop each sample at the first block whose
        confidence passes its threshold (:meth:`predict_early_exit` also says the blocks used
        and the compute saved).  None (default): every block.
    early_exit_rule : {"softmax", "lightff"}
        The confidence rule early exit calibrates (see :func:`fflib.early_exit.calibrate`).
    head_epochs : extra epochs training only the one-pass head; head_lr : the head's
        learning rate (default ``lr``), scaled by the schedule like ``lr``.
    early_stopping : bool
        Hold out ``validation_fraction`` of the training data (stratified) and stop when the
        validation accuracy has not improved by ``tol`` for ``n_iter_no_change`` epochs; the
        best epoch's parameters are kept.  Needs ``order="simultaneous"``.
    random_state : int, numpy Generator or None (initialisation, shuffling, negatives).
    threads : C core threads for fit (None leaves the current setting).
    verbose : show tqdm progress bars.

    Attributes (after fit)
    ----------------------
    model_ : the trained :class:`FFModel`.
    classes_ : the sorted class labels (any type ``np.unique`` sorts).
    n_features_in_, feature_names_in_ : the training data's feature count and (for a
        DataFrame with string column names) names.
    n_iter_ : epochs run by fit and by every ``partial_fit`` call since.
    loss_curve_ : per epoch, the mean of the blocks' FF losses.
    validation_scores_, best_validation_score_ : with ``early_stopping``, the validation
        accuracy after every epoch and the best one.
    history_ : the :func:`fflib.fit` history of the last fit.
    early_exit_ : with ``early_exit``, the calibrated :class:`fflib.EarlyExit` (its ``info``
        holds the validation accuracy with and without early exit and the mean blocks used).
    """

    def __init__(self, hidden=(500, 100), epochs="auto", batch_size=100, lr=0.003, threshold=None,
                 goodness="mean", norm="rms", loss=_DEFAULT_LOSS, label_placement="append", optimizer="adam",
                 momentum=0.9, weight_decay=0.0, milestones=None, gamma=0.1, cooldown=True,
                 order="simultaneous", negatives="uniform", inference="onepass", head_epochs=0,
                 head_lr=None, early_stopping=False, validation_fraction=0.1, n_iter_no_change=10,
                 tol=1e-4, random_state=None, threads=None, verbose=False, margin=1.0, method="ff",
                 image_shape=None, early_exit=None, early_exit_rule="softmax", block_thresholds=None,
                 head_dropout=0.0, standardize=False, block_decay=1.0, architecture="mlp",
                 channels=None, augment=None):
        self.hidden, self.epochs, self.batch_size, self.lr = hidden, epochs, batch_size, lr
        self.threshold, self.goodness, self.norm, self.loss = threshold, goodness, norm, loss
        self.label_placement = label_placement
        self.optimizer, self.momentum, self.weight_decay = optimizer, momentum, weight_decay
        self.milestones, self.gamma, self.cooldown, self.order = milestones, gamma, cooldown, order
        self.negatives, self.inference, self.head_epochs = negatives, inference, head_epochs
        self.head_lr = head_lr
        self.early_stopping, self.validation_fraction = early_stopping, validation_fraction
        self.n_iter_no_change, self.tol = n_iter_no_change, tol
        self.random_state, self.threads, self.verbose = random_state, threads, verbose
        self.margin, self.method, self.image_shape = margin, method, image_shape
        self.early_exit, self.early_exit_rule = early_exit, early_exit_rule
        self.block_thresholds, self.head_dropout = block_thresholds, head_dropout
        self.standardize, self.block_decay = standardize, block_decay
        self.architecture, self.channels, self.augment = architecture, channels, augment

    # ------------------------------------------------------------------ building
    def build(self, n_features, n_classes, seed, input_shape=None):
        """The untrained :class:`FFModel` that :meth:`fit` trains (``input_shape``: the samples'
        (C, H, W), default ``n_features``)."""
        if self.architecture != "mlp":
            return self._build_cnn(n_classes, seed, input_shape)
        hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else tuple(self.hidden)
        if not hidden or any(isinstance(h, bool) or int(h) != h or h <= 0 for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive sizes, got {self.hidden!r}")
        hidden = tuple(int(h) for h in hidden)
        threshold = self.threshold
        if threshold is None:  # per unit for mean goodness, per layer for sum goodness (negated for neg-)
            threshold = default_threshold(self.goodness, hidden[0])
        kw = dict(loss=self.loss, threshold=threshold, goodness=self.goodness, norm=self.norm, seed=seed,
                  margin=self.margin, block_thresholds=self.block_thresholds, head_dropout=self.head_dropout)
        if self.method == "uff":   # autoencoder cells; the probe reads every block
            if self.block_thresholds is not None:
                raise ValueError("block_thresholds does not apply to method='uff' (autoencoder cells have no "
                                 "threshold)")
            from .uff import uff_model
            model = uff_model((n_features,) + hidden, n_classes, input_shape, norm=self.norm, seed=seed)
            model.set_config(head_dropout=self.head_dropout)
            return model
        if self.method != "ff":   # no label in the input; the probe reads every block
            kw.update(label_encoding="none", head_blocks=list(range(len(hidden))))
        else:
            if self.label_placement == "overwrite" and n_features < n_classes:
                raise ValueError(f"label_placement='overwrite' writes the one-hot label of {n_classes} classes "
                                 f"over the first features, but X has only {n_features}; use 'append'")
            kw.update(label_placement=self.label_placement)
        return FFModel(mlp((n_features,) + hidden, norm=self.norm), input_shape or n_features, n_classes, **kw)

    def _build_cnn(self, n_classes, seed, input_shape):
        arch = self.architecture
        if input_shape is None:
            raise ValueError(f"architecture={arch!r} is a CNN: give image_shape=(C, H, W) or fit on images shaped "
                             f"(n, C, H, W) or (n, H, W)")
        kw = dict(seed=seed, margin=self.margin, head_dropout=self.head_dropout)
        if arch == "cnn":
            kw.update(loss=self.loss, goodness=self.goodness, norm=self.norm)
            if self.threshold is not None:
                kw.update(threshold=self.threshold)
        else:
            kw.update(loss="cwc" if self.loss == _DEFAULT_LOSS else self.loss, channels=self.channels)
        try:
            return zoo_model(arch, input_shape, n_classes, **kw)
        except ValueError as e:
            if not str(e).startswith("layers["):   # not a layer that the image's size left nothing for
                raise
            raise ValueError(f"architecture={arch!r} cannot take {'x'.join(map(str, input_shape))} images "
                             f"(its convolutions and pooling need larger ones): {e}") from None

    def _optimizer(self, model):
        head_lr = self.head_lr
        if head_lr is None and self.architecture in GROUP_MODELS:
            head_lr = self.lr / 10
        if self.optimizer == "adam":
            return Adam(model, lr=self.lr, weight_decay=self.weight_decay, head_lr=head_lr)
        if self.optimizer == "adamw":
            return AdamW(model, lr=self.lr, weight_decay=self.weight_decay, head_lr=head_lr)
        if self.optimizer == "sgd":
            return SGD(model, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                       head_lr=head_lr)
        raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}")

    def _num_epochs(self, n_samples):
        steps = math.ceil(n_samples / self._batch_size())
        if isinstance(self.epochs, str):
            if self.epochs != "auto":
                raise ValueError(f"epochs must be 'auto' or an int >= 1, got {self.epochs!r}")
            return max(10, math.ceil(AUTO_MIN_UPDATES / steps))
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be 'auto' or an int >= 1, got {self.epochs!r}")
        return int(self.epochs)

    def _batch_size(self):
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        return int(self.batch_size)

    def _validate(self, X, y="no_validation", reset=True):
        _need_sklearn()
        if getattr(X, "ndim", 2) > 2:  # images: flattened, as the MLP sees them
            X = np.asarray(as_array(X, "X"))
            X = X.reshape(len(X), -1)
        elif hasattr(X, "__dlpack__") and not hasattr(X, "columns"):
            X = as_array(X, "X")
        if isinstance(y, str) and y == "no_validation":
            return validate_data(self, X, reset=reset, dtype=np.float32, order="C")
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32, order="C")
        check_classification_targets(y)
        return X, y

    def _check_options(self):
        """The settings fit checks before training (each error names its parameter)."""
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        arch = self.architecture
        if arch != "mlp":
            if self.method != "ff":
                raise ValueError(f"architecture={arch!r} trains with labels: method must be 'ff', got "
                                 f"method={self.method!r} (the label-free methods train the MLP)")
            if self.standardize:
                raise ValueError(f"standardize=True standardises an MLP's features; architecture={arch!r} "
                                 f"normalises its images itself (batch or length norm)")
            if self.label_placement != "append":
                raise ValueError(f"label_placement is the MLP's; architecture={arch!r} reads the label "
                                 f"{'from a learned label channel' if arch == 'cnn' else 'from no input'}, got "
                                 f"{self.label_placement!r}")
            if np.ravel(np.asarray(self.hidden, dtype=object)).tolist() != [500, 100]:
                raise ValueError(f"hidden sets the MLP's layers; architecture={arch!r} has its own (channels= "
                                 f"sets a channel-group CNN's widths), got hidden={self.hidden!r}")
        if arch == "cnn":
            if self.loss in CWCOMP_LOSSES:
                raise ValueError(f"architecture='cnn' puts the label in its input: loss {self.loss!r} is for the "
                                 f"channel-group CNNs ({', '.join(GROUP_MODELS)})")
            if self.channels is not None:
                raise ValueError(f"channels sets a channel-group CNN's widths ({', '.join(GROUP_MODELS)}); the "
                                 f"survey CNN's are fixed, got channels={self.channels!r}")
        elif arch in GROUP_MODELS:
            if self.loss != _DEFAULT_LOSS and self.loss not in CWCOMP_LOSSES:
                raise ValueError(f"architecture={arch!r} trains on its channel groups: loss must be one of "
                                 f"{CWCOMP_LOSSES} (the default means 'cwc'), got loss={self.loss!r}")
            if self.negatives != "uniform" or self.order != "simultaneous":
                raise ValueError(f"architecture={arch!r} draws no negatives and trains its blocks simultaneously: "
                                 f"leave negatives='uniform' and order='simultaneous' (got {self.negatives!r}, "
                                 f"{self.order!r})")
        elif self.channels is not None:
            raise ValueError(f"channels sets a channel-group CNN's widths ({', '.join(GROUP_MODELS)}); the MLP's "
                             f"layers are hidden=, got channels={self.channels!r}")
        if self.inference not in ("onepass", "multipass"):
            raise ValueError(f"inference must be 'onepass' or 'multipass', got {self.inference!r}")
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method != "ff":
            if self.inference != "onepass":
                raise ValueError(f"method={self.method!r} trains without labels in the input, so there is no "
                                 f"multi-pass prediction: inference must be 'onepass', got {self.inference!r}")
            if self.early_stopping:
                raise ValueError(f"early_stopping needs method='ff', got method={self.method!r}")
            if self.method == "uff":
                if self.loss != _DEFAULT_LOSS:
                    raise ValueError(f"method='uff' trains autoencoder cells on their reconstruction loss: leave "
                                     f"loss at its default, got loss={self.loss!r}")
            elif self.loss not in ("ff", "symba"):
                raise ValueError(f"method={self.method!r} trains on explicit negatives: loss must be 'ff' or "
                                 f"'symba', got loss={self.loss!r}")
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")
        if self.standardize and self.method != "ff":
            raise ValueError(f"standardize=True needs method='ff' (it standardises a labelled model's input), "
                             f"got method={self.method!r}")
        if isinstance(self.margin, (bool, np.bool_)) or not isinstance(self.margin, (int, float, np.integer,
                                                                                        np.floating)) \
                or not 0 <= float(self.margin) < math.inf:
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin!r}")
        if self.early_exit is not None:
            ee = self.early_exit
            if isinstance(ee, (bool, np.bool_)) or not isinstance(ee, (int, float, np.integer, np.floating)) \
                    or not 0 <= float(ee) < 1:
                raise ValueError(f"early_exit must be None or the validation accuracy loss allowed, a fraction "
                                 f"in [0, 1) (0.002 = 0.2 percentage points), got {ee!r}")
            if self.early_exit_rule not in ("softmax", "lightff"):
                raise ValueError(f"early_exit_rule must be 'softmax' or 'lightff', got {self.early_exit_rule!r}")
        if (self.early_stopping or self.early_exit is not None) and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")

    def _input_shape(self, n_features, images):
        """(C, H, W) for a label-free model: ``image_shape``, else the images fit was given, else
        None (and None for method "ff")."""
        shape = self.image_shape if self.image_shape is not None else images
        if shape is None:
            if self.method == "hybrid":
                raise ValueError("method='hybrid' mixes images: give image_shape=(C, H, W) or fit on images "
                                 "shaped (n, C, H, W) or (n, H, W)")
            return None
        shape = tuple(shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or any(isinstance(v, (bool, np.bool_)) or int(v) != v or v < 1 for v in shape) \
                or int(np.prod(shape)) != n_features:
            raise ValueError(f"image_shape must be (C, H, W) of positive ints with C*H*W = n_features "
                             f"({n_features}), got {self.image_shape if self.image_shape is not None else shape!r}")
        # FF with labels reads flat samples (the label is appended to, or written over, the
        # features); the CNNs read images
        return tuple(int(v) for v in shape) if self.method != "ff" or self.architecture != "mlp" else None

    def _start(self, X, classes, images=None):
        """Fresh model, rng and bookkeeping for ``classes``."""
        if len(classes) < 2:
            raise ValueError(f"FFClassifier needs at least two classes in y, got {len(classes)} class")
        self.classes_ = classes
        rs = self.random_state
        self._rng = rs if isinstance(rs, np.random.Generator) else np.random.default_rng(rs)
        seed = int(self._rng.integers(0, 2**63 - 1))
        self.model_ = self.build(X.shape[1], len(classes), seed, self._input_shape(X.shape[1], images))
        if self.standardize:   # every feature to mean 0, std 1 by the training data, inside the model
            X64 = np.asarray(X, np.float64)
            std = X64.std(axis=0)
            self.model_.set_input_norm(X64.mean(axis=0), np.where(std > 0, std, 1.0))
        self.n_iter_, self.loss_curve_ = 0, []

    def _encode(self, y):
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            raise ValueError(f"y holds labels not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(np.asarray(y)[bad]).tolist()[:10]}")
        return idx.astype(np.int64)

    def _record(self, history):
        for rec in history["epochs"]:
            if history.get("method", "ff") != "ff":   # label-free: the probe's epochs are not counted
                if rec["block_loss"] is not None:
                    self.loss_curve_.append(float(np.nanmean(np.asarray(rec["block_loss"], np.float64))))
                    self.n_iter_ += 1
            elif any(rec["active"]):
                losses = [v for v, a in zip(rec["block_loss"], rec["active"]) if a]
                self.loss_curve_.append(float(np.mean(losses)))
                self.n_iter_ += 1

    def _set_threads(self):
        if self.threads is not None:
            from . import set_num_threads
            set_num_threads(self.threads)

    # ------------------------------------------------------------------ training
    def fit(self, X, y):
        """Train on X (n_samples, n_features) (images are flattened) and labels y of any type
        ``np.unique`` sorts; returns self."""
        images = tuple(np.shape(X)[1:]) if getattr(X, "ndim", 2) > 2 else None
        X, y = self._validate(X, y, reset=True)
        self._check_options()
        self._set_threads()
        self._start(X, np.unique(y), images)
        self.__dict__.pop("early_exit_", None)
        y_idx = self._encode(y)
        model = self.model_
        if self.early_stopping and self.order != "simultaneous":
            raise ValueError(f"early_stopping needs order='simultaneous', got order={self.order!r}")
        if self.early_stopping or self.early_exit is not None:
            X, X_val, y_idx, y_val = train_test_split(
                X, y_idx, test_size=self.validation_fraction, stratify=y_idx,
                random_state=int(self._rng.integers(0, 2**31 - 1)))
        epochs = self._num_epochs(len(X))
        probe_epochs = (self.head_epochs or epochs) if self.method != "ff" else 0
        opt = self._optimizer(model)
        sched = None
        total = (epochs if self.order == "simultaneous" else epochs * model.num_blocks) + probe_epochs
        _real("block_decay", self.block_decay, lo=0.0, hi=1.0, lo_open=True)
        if self.block_decay != 1.0 and (self.method == "ff" or self.milestones or not self.cooldown):
            raise ValueError(f"block_decay={self.block_decay!r} anneals a label-free method's blocks before its "
                             f"probe's cooldown: it needs method 'scff', 'hybrid' or 'uff', cooldown=True and no "
                             f"milestones (got method={self.method!r}, cooldown={self.cooldown!r}, "
                             f"milestones={self.milestones!r})")
        if self.milestones:
            sched = MultiStepLR(opt, self.milestones, self.gamma)
        elif self.cooldown and self.block_decay != 1.0:
            sched = LinearCooldown(opt, total, start=total - probe_epochs, decay=self.block_decay)
        elif self.cooldown:
            sched = LinearCooldown(opt, total)
        kw = dict(batch_size=self._batch_size(), optimizer=opt, negatives=self.negatives,
                  random_state=self._rng, progress=self.verbose, augment=self.augment)
        if self.method != "ff":
            self.history_ = fit(model, X, y_idx, epochs=epochs, scheduler=sched, order=self.order,
                                head_epochs=probe_epochs, method=self.method, **kw)
            self._record(self.history_)
        elif not self.early_stopping:
            self.history_ = fit(model, X, y_idx, epochs=epochs, scheduler=sched, order=self.order,
                                head_epochs=self.head_epochs, **kw)
            self._record(self.history_)
        else:
            self._fit_early_stopping(X, y_idx, X_val, y_val, epochs, sched, kw)
        if self.early_exit is not None:
            self.early_exit_ = model.calibrate_early_exit(X_val, y_val, mode=self.inference,
                                                          rule=self.early_exit_rule, max_drop=float(self.early_exit))
        return self

    def _fit_early_stopping(self, X, y_idx, X_val, y_val, epochs, sched, kw):
        """One epoch at a time, scored on the held-out part; the best epoch's parameters kept."""
        model = self.model_
        self.history_ = {"epochs": [], "interrupted": False, "train_seconds": 0.0}
        self.validation_scores_, self.best_validation_score_ = [], -np.inf
        best, waited = model.state_dict(), 0
        for _ in range(epochs):
            h = fit(model, X, y_idx, epochs=1, **kw)
            self.history_["epochs"] += h["epochs"]
            self.history_["train_seconds"] += h["train_seconds"]
            self._record(h)
            if sched is not None:
                sched.step()
            score = float(np.mean(self._full_predict_index(X_val) == y_val))
            self.validation_scores_.append(score)
            if score > self.best_validation_score_ + self.tol:
                self.best_validation_score_, best, waited = score, model.state_dict(), 0
            else:
                waited += 1
            if h["interrupted"] or waited >= self.n_iter_no_change:
                self.history_["interrupted"] = h["interrupted"]
                break
        model.load_state_dict(best)
        if self.head_epochs:
            h = fit(model, X, y_idx, epochs=0, head_epochs=self.head_epochs, **kw)
            self.history_["epochs"] += h["epochs"]

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y) at the constant rate ``lr`` (no schedule, no early stopping):
        FF learns online (with ``method`` "scff"/"hybrid": one label-free epoch, then one epoch
        of the probe).  The first call (on an unfitted estimator) needs ``classes``, every
        label that will ever appear; later calls continue training the same model.  Early exit
        calibrates on fit's held-out split, so it needs ``early_exit=None`` here."""
        first = not hasattr(self, "model_")
        images = tuple(np.shape(X)[1:]) if getattr(X, "ndim", 2) > 2 else None
        X, y = self._validate(X, y, reset=first)
        self._check_options()
        if self.early_exit is not None:
            raise ValueError("early_exit calibrates its thresholds on fit's held-out split; partial_fit does not "
                             f"calibrate: set early_exit=None (got {self.early_exit!r}) or call fit")
        self._set_threads()
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit "
                                 "(every label that will ever appear)")
            self._start(X, np.unique(classes), images)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {np.unique(classes).tolist()} differ from classes_ "
                             f"{self.classes_.tolist()} of the earlier calls")
        self.__dict__.pop("early_exit_", None)
        y_idx = self._encode(y)
        extra = dict(method=self.method, head_epochs=1) if self.method != "ff" else {}
        self.history_ = fit(self.model_, X, y_idx, epochs=1, batch_size=self._batch_size(),
                            optimizer=self._optimizer(self.model_), negatives=self.negatives,
                            random_state=self._rng, progress=self.verbose, augment=self.augment, **extra)
        self._record(self.history_)
        return self

    # ------------------------------------------------------------------ inference
    def _check_fitted(self):
        _need_sklearn()
        if not hasattr(self, "model_"):
            raise FFNotFittedError("this FFClassifier is not fitted yet; call fit(X, y) first")

    def _full_predict_index(self, X):
        if self.inference == "multipass":
            return self.model_.predict_multipass(X)
        return self.model_.predict_proba(X).argmax(axis=1)

    def _predict_index(self, X):
        ee = getattr(self, "early_exit_", None)
        if ee is not None:
            return self.model_.predict_early_exit(X, ee, self.inference).pred
        return self._full_predict_index(X)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes): the one-pass softmax head, or with
        ``inference="multipass"`` a softmax over the summed goodness of every label.  With
        ``early_exit``: the softmax of the scores of the block each sample exits at (the
        partial head logits, or the goodness summed so far), computed from full passes (use
        :meth:`predict` for the compute saving)."""
        self._check_fitted()
        X = self._validate(X, reset=False)
        if self.inference not in ("onepass", "multipass"):
            raise ValueError(f"inference must be 'onepass' or 'multipass', got {self.inference!r}")
        ee = getattr(self, "early_exit_", None)
        if ee is not None:
            from .early_exit import cumulative_scores, reference_exit
            cum, decide = cumulative_scores(self.model_, X, self.inference)
            _, used = reference_exit(cum, decide, ee.thresholds, ee.rule)
            last = used == cum.shape[1]
            g = cum[np.arange(len(X)), used - 1].astype(np.float64)
            if self.inference == "onepass":     # the last block's entry is the head's softmax already
                p = g.copy()
                g = g[~last]
            g -= g.max(axis=1, keepdims=True)
            e = np.exp(g)
            e /= e.sum(axis=1, keepdims=True)
            if self.inference == "onepass":
                p[~last] = e
                return p
            return e
        if self.inference == "multipass":
            g = self.model_.goodness(X).sum(axis=2).astype(np.float64)
            g -= g.max(axis=1, keepdims=True)
            p = np.exp(g)
            return p / p.sum(axis=1, keepdims=True)
        return self.model_.predict_proba(X).astype(np.float64)

    def predict(self, X):
        """Predicted labels (from ``classes_``); with ``early_exit``, each sample from the first
        block whose confidence passes its calibrated threshold."""
        self._check_fitted()
        X = self._validate(X, reset=False)
        if self.inference not in ("onepass", "multipass"):
            raise ValueError(f"inference must be 'onepass' or 'multipass', got {self.inference!r}")
        return self.classes_[self._predict_index(X)]

    def predict_early_exit(self, X):
        """Early-exit prediction with the calibrated ``early_exit_``: an
        :class:`fflib.early_exit.EarlyExitResult` whose ``pred`` holds labels from ``classes_``,
        with the blocks each sample used and the multiply-accumulates saved."""
        self._check_fitted()
        ee = getattr(self, "early_exit_", None)
        if ee is None:
            raise ValueError("predict_early_exit needs a classifier fitted with early_exit (e.g. early_exit=0.002)")
        X = self._validate(X, reset=False)
        r = self.model_.predict_early_exit(X, ee, self.inference)
        r.pred = self.classes_[r.pred]
        return r

    def test_errors(self, X, y):
        """Test error in percent with both inferences, and per-block accuracy."""
        self._check_fitted()
        X = self._validate(X, reset=False)
        return evaluate(self.model_, X, self._encode(np.asarray(y)))
