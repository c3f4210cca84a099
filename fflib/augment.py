"""Training-time data augmentation for image models, applied per minibatch by :func:`fflib.fit`.

An augmentation is given as a spec string of ``+``-separated parts:

- ``flip``: mirror each image left-right with probability 1/2 (CIFAR-10; not for digits);
- ``cropN`` (e.g. ``crop4``): pad each image with N zero pixels on every side and cut a random
  H x W window out of it, i.e. a random shift of up to N pixels in each direction;
- ``none``: no augmentation.

``"crop4+flip"`` is the usual CIFAR-10 recipe; ``"crop2"`` suits MNIST.  Positives and
negatives of a minibatch are made from the same augmented images.  Test-time inputs are never
augmented.
"""
import re

import numpy as np

__all__ = ["Augment", "parse"]


class Augment:
    """A parsed augmentation: ``aug(images, rng)`` augments a float32 (B, C, H, W) batch in
    place and returns it."""

    def __init__(self, crop=0, flip=False):
        if isinstance(crop, bool) or int(crop) != crop or crop < 0:
            raise ValueError(f"augment crop must be an int >= 0, got {crop!r}")
        self.crop, self.flip = int(crop), bool(flip)

    def __bool__(self):
        return self.crop > 0 or self.flip

    def __repr__(self):
        parts = ([f"crop{self.crop}"] if self.crop else []) + (["flip"] if self.flip else [])
        return "+".join(parts) or "none"

    def __call__(self, images, rng):
        return self.apply(images, self.draw(len(images), rng))

    def draw(self, b, rng):
        """The random choices for ``b`` images from ``rng`` (those :meth:`__call__` makes, in
        its order): a tuple (mirror flags, row shifts, column shifts), None where a part is off.
        Distributed training draws them for the whole global minibatch on every rank, so its
        data-order generator stays in step, and applies each rank's rows (:meth:`rows`)."""
        mirror = rng.random(b) < 0.5 if self.flip else None
        p = self.crop
        dy = rng.integers(0, 2 * p + 1, b) if p else None
        dx = rng.integers(0, 2 * p + 1, b) if p else None
        return mirror, dy, dx

    @staticmethod
    def rows(draws, lo, hi):
        """The choices of images ``lo:hi`` out of :meth:`draw`'s."""
        return tuple(None if d is None else d[lo:hi] for d in draws)

    def apply(self, images, draws):
        """Augment the float32 (B, C, H, W) ``images`` in place by :meth:`draw`'s choices for B
        images; returns them."""
        if images.ndim != 4:
            raise ValueError(f"augmentation needs image batches (B, C, H, W), got shape {images.shape}")
        b, _, h, w = images.shape
        mirror, dy, dx = draws
        if any(d is not None and len(d) != b for d in draws):
            raise ValueError(f"augmentation draws for {len(next(d for d in draws if d is not None))} images, "
                             f"got a batch of {b}")
        if mirror is not None:
            images[mirror] = images[mirror][..., ::-1]
        p = self.crop
        if p:
            if p >= h or p >= w:
                raise ValueError(f"augment crop{p} must be smaller than the image ({h}x{w})")
            padded = np.zeros((b, images.shape[1], h + 2 * p, w + 2 * p), np.float32)
            padded[:, :, p:p + h, p:p + w] = images
            for i in range(b):
                images[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        return images


def parse(spec):
    """An :class:`Augment` from a spec string (see the module docstring), an Augment, or None."""
    if spec is None or isinstance(spec, Augment):
        return spec if spec else None
    if not isinstance(spec, str):
        raise TypeError(f"augment must be a string such as 'crop4+flip', got {type(spec).__name__}")
    crop, flip = 0, False
    for part in spec.replace(",", "+").split("+"):
        part = part.strip().lower()
        m = re.fullmatch(r"crop(\d+)", part)
        if part == "flip":
            flip = True
        elif m:
            crop = int(m.group(1))
        elif part != "none":
            raise ValueError(f"augment: unknown part {part!r} in {spec!r}; use flip, cropN (e.g. crop4) or none")
    aug = Augment(crop, flip)
    return aug if aug else None
