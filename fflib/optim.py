"""Optimisers and learning-rate schedules.

The optimiser arithmetic runs in C (csrc/ff_optim.c) inside :meth:`FFModel.train_step`, each
layer with its own state; these objects hold the settings, push them to the core, and give
the PyTorch-style ``step()`` / ``zero_grad()`` / ``param_groups`` interface that schedulers use.
"""
import numpy as np

_ADAM, _SGD = 1, 0


class _Optimizer:
    def __init__(self, model, lr, layers, head, head_lr=None):
        if not (np.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        if head_lr is not None and not (np.isfinite(head_lr) and head_lr >= 0):
            raise ValueError(f"head_lr must be None or a finite number >= 0, got {head_lr!r}")
        self.head_lr = None if head_lr is None else float(head_lr)
        self.model = model
        all_layers = model.trainable_layers()
        if layers is None:   # every layer and a label embedding; the head below
            layers = [i for i in all_layers if i != -1]
        else:
            layers = [int(i) for i in layers]
            bad = [i for i in layers if i not in all_layers or i == -1]
            if bad:
                raise ValueError(f"layers {bad} are not trainable layers of the model ({all_layers})")
        if head and model.has_head:
            layers = layers + [-1]
        self.layers = layers
        self.param_groups = [{"lr": float(lr), "initial_lr": float(lr)}]
        self._apply()

    @property
    def lr(self):
        """Current learning rate."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {value!r}")
        self.param_groups[0]["lr"] = float(value)
        self._apply()

    def _apply(self):
        g = self.param_groups[0]
        for i in self.layers:
            lr = g["lr"]
            if i == -1 and self.head_lr is not None:   # the head follows the schedule's factor
                lr = self.head_lr * (g["lr"] / g["initial_lr"] if g["initial_lr"] > 0 else 1.0)
            self.model._net.set_opt(i, **self._settings(lr))

    def step(self, active=None):
        """Apply one update from the gradients left by :meth:`FFModel.compute_grads`.  (The
        fused :meth:`FFModel.train_step` steps by itself; do not call this after it.)"""
        self._apply()  # a scheduler may have changed param_groups[0]["lr"]
        act = None if active is None else np.ascontiguousarray(active, dtype=np.uint8)
        self.model._net.optimizer_step(act, -1 in self.layers)

    def zero_grad(self):
        """Zero the model's gradients."""
        self.model.zero_grad()

    def state_dict(self):
        """Settings and learning rate (moments live with the model: FFModel.optimizer_state)."""
        return {"param_groups": [dict(g) for g in self.param_groups], "layers": list(self.layers),
                "head_lr": self.head_lr}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output."""
        self.param_groups = [dict(g) for g in state["param_groups"]]
        self.head_lr = state.get("head_lr", self.head_lr)
        self._apply()


class Adam(_Optimizer):
    """Adam (PyTorch semantics, L2 ``weight_decay`` added to the gradient), one state per layer.

    ``layers``: indices of the layers it drives (default all); ``head``: also the one-pass head;
    ``head_lr``: the head's learning rate if not ``lr`` (schedulers scale both alike)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, layers=None, head=True,
                 head_lr=None):
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        if not (eps >= 0):
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not (weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.betas, self.eps, self.weight_decay = (float(b1), float(b2)), float(eps), float(weight_decay)
        super().__init__(model, lr, layers, head, head_lr)

    def _settings(self, lr):
        return dict(kind=_ADAM, lr=lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                    weight_decay=self.weight_decay)


class SGD(_Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch semantics)."""

    def __init__(self, model, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 layers=None, head=True, head_lr=None):
        if not (momentum >= 0):
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        if not (0 <= dampening <= 1):
            raise ValueError(f"dampening must be in [0, 1], got {dampening!r}")
        if not (weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        super().__init__(model, lr, layers, head, head_lr)

    def _settings(self, lr):
        return dict(kind=_SGD, lr=lr, momentum=self.momentum, dampening=self.dampening,
                    nesterov=self.nesterov, weight_decay=self.weight_decay)


class _Scheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.param_groups[0]["initial_lr"]
        self.last_epoch = 0

    def step(self):
        """Advance one epoch and set the optimiser's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """The learning rate now in force (a one-element list, as in PyTorch)."""
        return [self.optimizer.lr]


class MultiStepLR(_Scheduler):
    """Multiply the learning rate by ``gamma`` at each epoch in ``milestones`` (PyTorch's MultiStepLR)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        ms = [int(m) for m in milestones]
        if any(m <= 0 for m in ms) or ms != sorted(ms):
            raise ValueError(f"milestones must be increasing positive epochs, got {milestones!r}")
        if not (gamma > 0):
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.milestones, self.gamma = ms, float(gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if m <= epoch)


class LinearCooldown(_Scheduler):
    """Constant learning rate until ``start`` epochs, then linear decay to 0 at ``total``
    (Hinton's FF recipe cools the rate down over the second half of training)."""

    def __init__(self, optimizer, total, start=None):
        total = int(total)
        start = total // 2 if start is None else int(start)
        if total <= 0 or not (0 <= start < total):
            raise ValueError(f"need 0 <= start < total, got start={start}, total={total}")
        self.total, self.start = total, start
        super().__init__(optimizer)

    def lr_at(self, epoch):
        """Learning rate in force after ``epoch`` scheduler steps."""
        if epoch <= self.start:
            return self.base_lr
        return self.base_lr * max(0.0, (self.total - epoch) / (self.total - self.start))
