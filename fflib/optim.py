"""Optimisers and learning-rate schedules.

The optimiser arithmetic runs in C (csrc/ff_optim.c) inside :meth:`FFModel.train_step`, each
layer with its own state; these objects hold the settings, push them to the core, and give
the PyTorch-style ``step()`` / ``zero_grad()`` / ``param_groups`` / ``state_dict()`` interface
that schedulers use.  Every setting is checked when it is given: a finite number that float32
(the core's precision) can hold, in its range.
"""
import inspect
import math

import numpy as np

from .nn import FFModel, _real, _int_list, _active_mask, _P_MW, _P_MB, _P_VW, _P_VB, _check_array

_ADAM, _SGD, _ADAMW = 1, 0, 2
_MOMENTS = ((_P_MW, "m_weight"), (_P_MB, "m_bias"), (_P_VW, "v_weight"), (_P_VB, "v_bias"))


def _lr(name, value):
    return _real(name, value, lo=0.0)


class _Optimizer:
    def __init__(self, model, lr, layers, head, head_lr=None, layer_lr=None):
        if not isinstance(model, FFModel):
            raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
        lr = _lr("lr", lr)
        self.head_lr = None if head_lr is None else _lr("head_lr", head_lr)
        self.model = model
        all_layers = model.trainable_layers()
        if layers is None:   # every layer and a label embedding; the head below
            layers = [i for i in all_layers if i != -1]
        else:
            layers = _int_list("layers", layers)
            bad = [i for i in layers if i not in all_layers or i == -1]
            if bad:
                raise ValueError(f"layers {bad} are not trainable layers of the model ({all_layers})")
        self.head = bool(head)
        if self.head and model.has_head:
            layers = layers + [-1]
        self.layers = layers
        self.layer_lr = _check_layer_lr(layer_lr, layers, "layer_lr")
        self.param_groups = [{"lr": lr, "initial_lr": lr}]
        self._scheduler = None
        self._apply()
        model._optimizer = self     # fit(model) without optimizer= goes on with this one

    @property
    def lr(self):
        """Current learning rate."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        self.param_groups[0]["lr"] = _lr("lr", value)
        self._apply()

    def _apply(self):
        g = self.param_groups[0]
        factor = g["lr"] / g["initial_lr"] if g["initial_lr"] > 0 else 1.0
        for i in self.layers:
            lr = g["lr"]
            if i == -1 and self.head_lr is not None:   # the head follows the schedule's factor
                lr = self.head_lr * factor
            elif i in self.layer_lr:                   # so does a layer's own rate
                lr = self.layer_lr[i] * factor
            self.model._net.set_opt(i, **self._settings(lr))

    def step(self, active=None):
        """Apply one update from the gradients left by :meth:`FFModel.compute_grads`.  (The
        fused :meth:`FFModel.train_step` steps by itself; do not call this after it.)"""
        self._apply()  # a scheduler may have changed param_groups[0]["lr"]
        act = _active_mask(active, self.model.num_blocks)
        self.model._net.optimizer_step(act, -1 in self.layers)

    def zero_grad(self):
        """Zero the model's gradients."""
        self.model.zero_grad()

    def config(self):
        """The constructor settings (without ``model`` and ``lr``) as a JSON-able dict."""
        return dict(self._hyper(), layers=[i for i in self.layers if i != -1], head=self.head,
                    head_lr=self.head_lr, layer_lr={str(i): v for i, v in self.layer_lr.items()})

    def state_dict(self, moments=True):
        """Kind, settings, learning rate and (``moments=True``) the per-layer state the C core
        holds: moments ``m_weight``/``m_bias`` (SGD: the momentum buffer), ``v_weight``/``v_bias``
        and the step counter, keyed by layer index (-1 the head, -2 a label embedding)."""
        out = {"kind": type(self).__name__, "settings": self._hyper(), "layers": list(self.layers),
               "head": self.head, "head_lr": self.head_lr,
               "layer_lr": {str(i): v for i, v in self.layer_lr.items()},
               "param_groups": [dict(g) for g in self.param_groups]}
        if moments:
            state = {}
            for i in self.layers:
                state[i] = _read_layer_state(self.model, i)
            out["state"] = state
        return out

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (of an optimiser of the same kind, settings and
        layers); every value is checked before anything is changed."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        kind = state.get("kind", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"state is of a {kind} optimiser, this is {type(self).__name__}")
        if "settings" in state:
            settings = state["settings"]
            if not isinstance(settings, dict):
                raise TypeError(f"state['settings'] must be a dict, got {type(settings).__name__}")
            mine = self._hyper()
            if set(settings) != set(mine):
                raise ValueError(f"state['settings'] has keys {sorted(settings)}, expected {sorted(mine)}")
            hyper = self._check_hyper(**settings)
        else:
            hyper = None
        layers = _int_list("state['layers']", state.get("layers", self.layers))
        if layers != self.layers:
            raise ValueError(f"state['layers'] is {layers}, this optimiser drives layers {self.layers}")
        groups = state.get("param_groups", self.param_groups)
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(groups[0], dict):
            raise ValueError(f"state['param_groups'] must be a list of one dict, got {groups!r}")
        group = {"lr": _lr("param_groups[0]['lr']", groups[0].get("lr")),
                 "initial_lr": _lr("param_groups[0]['initial_lr']", groups[0].get("initial_lr", groups[0].get("lr")))}
        head_lr = state.get("head_lr", self.head_lr)
        head_lr = None if head_lr is None else _lr("state['head_lr']", head_lr)
        layer_lr = _check_layer_lr(state.get("layer_lr", self.layer_lr), self.layers, "state['layer_lr']")
        moments = {}
        per_layer = state.get("state", {})
        if not isinstance(per_layer, dict):
            raise TypeError(f"state['state'] must be a dict of layer states, got {type(per_layer).__name__}")
        for key, s in per_layer.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"state['state'] keys must be layer indices, got {key!r}") from None
            if i not in self.layers or not isinstance(s, dict):
                raise ValueError(f"state['state'][{key!r}]: not a layer this optimiser drives ({self.layers})")
            moments[i] = _check_layer_state(self.model, i, s, f"state['state'][{i}]")
        # all checked: apply
        if hyper is not None:
            self._set_hyper(hyper)
        self.head_lr, self.layer_lr = head_lr, layer_lr
        self.param_groups = [group]
        self._apply()
        for i, s in moments.items():
            _write_layer_state(self.model, i, s)


def _check_layer_lr(layer_lr, layers, name):
    """``layer_lr`` as a dict {layer index: learning rate} over layers the optimiser drives (not
    the head, whose rate is ``head_lr``); keys may be ints or their strings (from JSON)."""
    if layer_lr is None:
        return {}
    if not isinstance(layer_lr, dict):
        raise TypeError(f"{name} must be a dict {{layer index: learning rate}}, got {type(layer_lr).__name__}")
    out = {}
    for k, v in layer_lr.items():
        try:
            if isinstance(k, (bool, np.bool_, float)):
                raise ValueError
            i = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{name} keys must be layer indices, got {k!r}") from None
        if i == -1 or i not in layers:
            raise ValueError(f"{name}: {k!r} is not a layer this optimiser drives "
                             f"({[j for j in layers if j != -1]}; the head's rate is head_lr)")
        out[i] = _lr(f"{name}[{k!r}]", v)
    return dict(sorted(out.items()))


def _check_layer_state(model, i, s, where):
    """Check one layer's optimiser state (moments finite, second moments >= 0, shapes of the
    layer's, a step counter in [0, 2**62)) and return it as native float32 arrays."""
    out = {}
    for which, name in _MOMENTS:
        p = model._net.param(i, which)
        if name in s:
            if p is None:
                raise ValueError(f"{where}: layer {i} has no {name}")
            out[name] = _check_array(f"{where}['{name}']", s[name], p.shape,
                                     nonnegative=name.startswith("v"))
    if "step" in s:
        t = s["step"]
        if isinstance(t, np.ndarray) and t.shape == ():
            t = t[()]
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < 2 ** 62:
            raise ValueError(f"{where}['step'] must be an int in [0, 2**62), got {t!r}")
        out["step"] = int(t)
    return out


def _read_layer_state(model, i):
    """A copy of layer ``i``'s optimiser state: the moments it has and its step counter."""
    s = {name: p.copy() for which, name in _MOMENTS if (p := model._net.param(i, which)) is not None}
    s["step"] = int(model._net.get_step(i))
    return s


def _write_layer_state(model, i, s):
    for which, name in _MOMENTS:
        if name in s:
            model._net.param(i, which)[...] = s[name]
    if "step" in s:
        model._net.set_step(i, s["step"])


class Adam(_Optimizer):
    """Adam (PyTorch semantics, L2 ``weight_decay`` added to the gradient), one state per layer.

    ``layers``: indices of the layers it drives (default all); ``head``: also the one-pass head;
    ``head_lr``: the head's learning rate if not ``lr``; ``layer_lr``: ``{layer index: rate}``
    for layers with their own rate (PyTorch's parameter groups; e.g. ``{1: 6e-3}`` doubles the
    first Linear of an MLP).  Schedulers scale every rate alike."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, layers=None, head=True,
                 head_lr=None, layer_lr=None):
        self._set_hyper(self._check_hyper(betas, eps, weight_decay))
        super().__init__(model, lr, layers, head, head_lr, layer_lr)

    @staticmethod
    def _check_hyper(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        b1 = _real("betas[0]", betas[0], lo=0.0, hi=1.0, hi_open=True)
        b2 = _real("betas[1]", betas[1], lo=0.0, hi=1.0, hi_open=True)
        return {"betas": [b1, b2], "eps": _real("eps", eps, lo=0.0),
                "weight_decay": _real("weight_decay", weight_decay, lo=0.0)}

    def _set_hyper(self, h):
        self.betas, self.eps, self.weight_decay = tuple(h["betas"]), h["eps"], h["weight_decay"]

    def _hyper(self):
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _settings(self, lr):
        return dict(kind=_ADAM, lr=lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                    weight_decay=self.weight_decay)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019; ``torch.optim.AdamW`` semantics): Adam whose
    ``weight_decay`` shrinks every parameter by ``1 - lr * weight_decay`` before each step
    instead of entering the gradient, so the decay does not pass through Adam's per-parameter
    scaling.  Default ``weight_decay`` 1e-2, as in PyTorch.  The head and every layer follow
    the schedule's rate in the decay too (the decay factor uses the current ``lr``)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, layers=None, head=True,
                 head_lr=None, layer_lr=None):
        super().__init__(model, lr, betas, eps, weight_decay, layers, head, head_lr, layer_lr)

    @staticmethod
    def _check_hyper(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        return Adam._check_hyper(betas, eps, weight_decay)

    def _settings(self, lr):
        return dict(super()._settings(lr), kind=_ADAMW)


class SGD(_Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch semantics);
    ``layers``, ``head``, ``head_lr`` and ``layer_lr`` as for :class:`Adam`."""

    def __init__(self, model, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 layers=None, head=True, head_lr=None, layer_lr=None):
        self._set_hyper(self._check_hyper(momentum, dampening, weight_decay, nesterov))
        super().__init__(model, lr, layers, head, head_lr, layer_lr)

    @staticmethod
    def _check_hyper(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        h = {"momentum": _real("momentum", momentum, lo=0.0),
             "dampening": _real("dampening", dampening, lo=0.0, hi=1.0),
             "weight_decay": _real("weight_decay", weight_decay, lo=0.0)}
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening 0, got momentum={momentum!r}, "
                             f"dampening={dampening!r}")
        h["nesterov"] = bool(nesterov)
        return h

    def _set_hyper(self, h):
        self.momentum, self.dampening = h["momentum"], h["dampening"]
        self.weight_decay, self.nesterov = h["weight_decay"], h["nesterov"]

    def _hyper(self):
        return {"momentum": self.momentum, "dampening": self.dampening, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def _settings(self, lr):
        return dict(kind=_SGD, lr=lr, momentum=self.momentum, dampening=self.dampening,
                    nesterov=self.nesterov, weight_decay=self.weight_decay)


OPTIMIZERS = {"Adam": Adam, "AdamW": AdamW, "SGD": SGD}


def _check_settings(what, fn, settings, skip=()):
    """A ValueError naming the keys when ``settings`` (from a file) does not fit ``fn``'s
    keyword arguments: one it does not take, or one it needs that is missing."""
    params = [p for name, p in inspect.signature(fn).parameters.items() if name not in skip]
    known = {p.name for p in params}
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    unknown, missing = sorted(set(settings) - known, key=str), sorted(required - set(settings))
    if unknown or missing:
        raise ValueError(f"{what} must have the keys {sorted(known)} ({', '.join(sorted(required)) or 'none'} "
                         f"required); unknown {unknown}, missing {missing}")


def optimizer_from_state(model, state):
    """A new optimiser of the kind and settings in ``state`` (an optimiser's :meth:`state_dict`)
    driving ``model``, with that state loaded."""
    if not isinstance(state, dict) or not isinstance(state.get("kind"), str) or state.get("kind") not in OPTIMIZERS:
        kind = state.get("kind") if isinstance(state, dict) else state
        raise ValueError(f"optimizer kind must be one of {sorted(OPTIMIZERS)}, got {kind!r}")
    settings = state.get("settings", {})
    if not isinstance(settings, dict):
        raise TypeError(f"optimizer settings must be a dict, got {type(settings).__name__}")
    cls = OPTIMIZERS[state["kind"]]
    _check_settings(f"{state['kind']} settings", cls._check_hyper, settings)
    h = cls._check_hyper(**settings)
    layers = [i for i in _int_list("layers", state.get("layers", [])) if i != -1]
    groups = state.get("param_groups") or [{}]
    lr = groups[0].get("initial_lr", groups[0].get("lr", 0.0)) if isinstance(groups[0], dict) else 0.0
    opt = cls(model, lr=lr, layers=layers, head=bool(state.get("head", True)), head_lr=state.get("head_lr"),
              layer_lr=state.get("layer_lr"), **h)
    opt.load_state_dict(state)
    return opt


def optimizer_from_layers(model):
    """The optimiser the C core's per-layer settings describe (a model file without an optimiser
    object: format 1, or a model trained without one), or None when the layers disagree: every
    layer and the head with one kind and the same settings but for their learning rates (the
    most common rate of the layers is ``lr``, the others ``layer_lr``)."""
    cfgs = {i: model._net.get_opt(i) for i in model.trainable_layers()}
    body = [i for i in cfgs if i != -1]
    if not body:
        return None
    rates = [cfgs[i]["lr"] for i in body]
    c = dict(cfgs[body[0]], lr=max(rates, key=rates.count))
    if any(dict(cfgs[i], lr=c["lr"]) != c for i in cfgs):
        return None
    layer_lr = {i: cfgs[i]["lr"] for i in body if cfgs[i]["lr"] != c["lr"]}
    head_lr = cfgs[-1]["lr"] if -1 in cfgs and cfgs[-1]["lr"] != c["lr"] else None
    common = dict(lr=c["lr"], weight_decay=c["weight_decay"], head_lr=head_lr, layer_lr=layer_lr)
    if c["kind"] in (_ADAM, _ADAMW):
        return (Adam if c["kind"] == _ADAM else AdamW)(model, betas=(c["beta1"], c["beta2"]), eps=c["eps"], **common)
    return SGD(model, momentum=c["momentum"], dampening=c["dampening"], nesterov=c["nesterov"], **common)


# ------------------------------------------------------------------------------- schedulers
class _Scheduler:
    """Base of the learning-rate schedules: ``step()`` once per epoch; the rate after ``e`` steps
    is ``lr_at(e)`` (closed forms of PyTorch's schedules, from the optimiser's initial rate)."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, _Optimizer):
            raise TypeError(f"optimizer must be an fflib optimiser (Adam, SGD), got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.param_groups[0]["initial_lr"]
        self.last_epoch = 0
        optimizer._scheduler = self
        optimizer.lr = self.lr_at(0)

    def step(self):
        """Advance one epoch and set the optimiser's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """The learning rate now in force (a one-element list, as in PyTorch)."""
        return [self.optimizer.lr]

    def config(self):
        """The constructor settings (without ``optimizer``) as a JSON-able dict."""
        return {}

    def state_dict(self):
        """Kind, settings, ``last_epoch`` and ``base_lr`` (JSON-able)."""
        return {"kind": type(self).__name__, "settings": self.config(), "last_epoch": self.last_epoch,
                "base_lr": self.base_lr}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output of a schedule of the same kind and settings (the
        optimiser's learning rate is restored by the optimiser's own state)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        kind = state.get("kind", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"state is of a {kind} schedule, this is {type(self).__name__}")
        if "settings" in state and state["settings"] != self.config():
            raise ValueError(f"state['settings'] {state['settings']!r} differ from this schedule's {self.config()!r}")
        e = state.get("last_epoch", self.last_epoch)
        if isinstance(e, (bool, np.bool_)) or not isinstance(e, (int, np.integer)) or not 0 <= e < 2 ** 31:
            raise ValueError(f"state['last_epoch'] must be an int in [0, 2**31), got {e!r}")
        self.base_lr = _lr("state['base_lr']", state.get("base_lr", self.base_lr))
        self.last_epoch = int(e)


def _epoch_int(name, value, lo=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not lo <= value < 2 ** 31:
        raise ValueError(f"{name} must be an int in [{lo}, 2**31), got {value!r}")
    return int(value)


class StepLR(_Scheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (PyTorch's StepLR)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _epoch_int("step_size", step_size)
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(_Scheduler):
    """Multiply the learning rate by ``gamma`` at each epoch in ``milestones`` (PyTorch's MultiStepLR)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        ms = _int_list("milestones", milestones)
        if not ms or any(m <= 0 or m >= 2 ** 31 for m in ms) or ms != sorted(ms):
            raise ValueError(f"milestones must be a non-empty list of increasing positive epochs, got {milestones!r}")
        self.milestones = ms
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer)

    def config(self):
        return {"milestones": list(self.milestones), "gamma": self.gamma}

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if m <= epoch)


class CosineAnnealingLR(_Scheduler):
    """Cosine from the initial rate down to ``eta_min`` over ``T_max`` epochs, then back up
    (PyTorch's CosineAnnealingLR, its closed form)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _epoch_int("T_max", T_max)
        self.eta_min = _real("eta_min", eta_min, lo=0.0)
        super().__init__(optimizer)

    def config(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LambdaLR(_Scheduler):
    """The initial rate times ``lr_lambda(epoch)`` (PyTorch's LambdaLR).  The function is not
    saved with a model or checkpoint: pass the same one again to resume."""

    def __init__(self, optimizer, lr_lambda):
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda must be a function of the epoch, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        f = self.lr_lambda(epoch)
        return _lr(f"base lr * lr_lambda({epoch})", self.base_lr * _real(f"lr_lambda({epoch})", f))


class LinearCooldown(_Scheduler):
    """Constant learning rate until ``start`` epochs, then linear decay to 0 at ``total``
    (Hinton's FF recipe cools the rate down over the second half of training); the same as
    PyTorch's LambdaLR with ``lambda e: 1 if e <= start else max(0, (total - e) / (total - start))``.

    ``decay`` (in (0, 1], default 1): the rate is multiplied by ``decay`` after each of the
    first ``start`` epochs and is back at the full rate when the cooldown starts, i.e.
    ``lambda e: decay ** e if e < start else ...`` as above.  This is a label-free run's
    schedule (:func:`fflib.fit` with ``method="scff"``, ``start`` its label-free epochs): the
    blocks anneal exponentially, as the SCFF authors' ExponentialLR does (Chen et al. 2025:
    x0.9 every 1,000 minibatches), then the linear probe starts at its own rate and cools."""

    def __init__(self, optimizer, total, start=None, decay=1.0):
        total = _epoch_int("total", total, lo=0)
        start = total // 2 if start is None else _epoch_int("start", start, lo=0)
        if not start < total:
            raise ValueError(f"need 0 <= start < total, got start={start}, total={total}")
        self.decay = _real("decay", decay, lo=0.0, hi=1.0, lo_open=True)
        self.total, self.start = total, start
        super().__init__(optimizer)

    def config(self):
        # decay 1 (the plain cooldown) is left out: the settings of schedules saved before it existed
        return {"total": self.total, "start": self.start, **({"decay": self.decay} if self.decay != 1.0 else {})}

    def load_state_dict(self, state):
        """As :meth:`_Scheduler.load_state_dict`; a cooldown planned for another run length is
        refused saying so (its rate has already fallen toward 0 over the planned epochs, so a
        longer run cannot continue it as an uninterrupted run of that length would have gone)."""
        saved = state.get("settings") if isinstance(state, dict) else None
        if isinstance(saved, dict) and state.get("kind", "LinearCooldown") == "LinearCooldown" and (
                saved.get("total"), saved.get("start")) != (self.total, self.start):
            raise ValueError(f"the checkpointed run's linear cooldown was planned for {saved.get('total')} epochs "
                             f"(decay from epoch {saved.get('start')}), this run's for {self.total} (from "
                             f"{self.start}): a cooldown depends on the run's length, so resume with the same "
                             f"epochs (a run without a cooldown, or with milestones, may grow)")
        super().load_state_dict(state)

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        if epoch < self.start:
            return self.base_lr * self.decay ** epoch
        if epoch == self.start:
            return self.base_lr
        return self.base_lr * max(0.0, (self.total - epoch) / (self.total - self.start))


SCHEDULERS = {c.__name__: c for c in (StepLR, MultiStepLR, CosineAnnealingLR, LambdaLR, LinearCooldown)}


def scheduler_from_state(optimizer, state):
    """A new schedule of the kind and settings in ``state`` (a :meth:`state_dict`) on ``optimizer``
    with that state loaded, without touching the optimiser's learning rate.  LambdaLR cannot
    be rebuilt (its function is not saved): a ValueError says so."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if not isinstance(kind, str) or kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    if kind == "LambdaLR":
        raise ValueError("a LambdaLR schedule cannot be rebuilt from a file (its function is not saved); "
                         "create it again and call load_state_dict")
    settings = state.get("settings", {})
    if not isinstance(settings, dict):
        raise TypeError(f"scheduler settings must be a dict, got {type(settings).__name__}")
    _check_settings(f"{kind} settings", SCHEDULERS[kind].__init__, settings, skip=("self", "optimizer"))
    lr = optimizer.param_groups[0]["lr"]
    sched = SCHEDULERS[kind](optimizer, **settings)
    optimizer.lr = lr
    sched.load_state_dict(state)
    return sched
