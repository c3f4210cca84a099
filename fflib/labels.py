"""Per-class Fourier labels: the mode tables behind ``label_encoding="fourier"``.

Scodellaro et al. (2023, "Training Convolutional Neural Networks with the Forward-Forward
algorithm") spread the label over the whole image: the image is superposed with a second image
of 2D Fourier modes whose wavelength, orientation and amplitude are chosen per class.  fflib
writes a label as a table of modes, shape (K, M, 4): row (k, m) is

    (wavelength lambda in pixels, orientation theta in radians, amplitude a, phase phi in radians)

and class k adds to every channel plane of the image (the C core computes it, in double)

    label_value * sum_m a_km cos(2 pi (h cos theta_km + w sin theta_km) / lambda_km + phi_km)

for pixel row h and column w.  A (K, 4) table is one mode per class (M = 1); a (K, 3) or
(K, M, 3) table leaves the phase at 0.

The paper leaves the mapping from classes to modes free (as the survey puts it); its own tables
are not reproduced here.  Tables: :func:`fourier_modes` ("fflib", the default: orientation pi k / K, wavelength
max(H, W) / (2 + k mod 3), amplitude 1, phase 0) and :func:`fit_fourier_modes` (modes fitted to
the data: each class's M strongest Fourier modes of its mean image minus the mean of all
images -- the encoding with which the first conv block of the survey's MNIST CNN learns, see
notebooks/fourier_labels.ipynb).
"""
import numpy as np

#: named tables for ``FFModel(..., fourier_modes=NAME)``
FOURIER_SCHEMES = ("fflib",)
#: most modes per class the C core takes
MAX_MODES = 4096
_COLUMNS = ("wavelength", "orientation", "amplitude", "phase")


def fourier_modes(scheme, num_classes, input_shape):
    """The (K, 1, 4) mode table of a named scheme for ``num_classes`` classes and images of
    ``input_shape`` (C, H, W).  "fflib": class k has orientation pi k / K, wavelength
    max(H, W) / (2 + k mod 3) pixels, amplitude 1 and phase 0 (fflib's original mapping, so
    every class differs in orientation and every third one in frequency too)."""
    if not isinstance(scheme, str) or scheme not in FOURIER_SCHEMES:
        raise ValueError(f"fourier_modes must be an array of modes or one of {list(FOURIER_SCHEMES)}, "
                         f"got {scheme!r}")
    K = int(num_classes)
    H, W = int(input_shape[1]), int(input_shape[2])
    k = np.arange(K, dtype=np.float64)
    out = np.zeros((K, 1, 4))
    out[:, 0, 0] = max(H, W) / (2 + np.arange(K) % 3)
    out[:, 0, 1] = np.pi * k / K
    out[:, 0, 2] = 1.0
    return out


def check_fourier_modes(modes, num_classes):
    """``modes`` as a float64 C-contiguous (K, M, 4) table, or a ValueError/TypeError saying
    what is wrong: shape (K, 3|4) or (K, M, 3|4), finite values, positive wavelengths, and
    waves of the pixel grid (at most half a cycle per pixel along rows and columns:
    wavelength >= 2 max(|cos theta|, |sin theta|); a faster wave aliases onto a longer one)."""
    K = int(num_classes)
    try:
        a = np.asarray(modes)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"fourier_modes must be an array of shape ({K}, 4) or ({K}, M, 4), got "
                        f"{type(modes).__name__} ({e})") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise TypeError(f"fourier_modes must hold real numbers, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3 or a.shape[0] != K or a.shape[2] not in (3, 4) or not 1 <= a.shape[1] <= MAX_MODES:
        raise ValueError(f"fourier_modes must have shape ({K}, 4) or ({K}, M, 4) with 1 <= M <= {MAX_MODES} "
                         f"(columns wavelength, orientation, amplitude[, phase]), got shape {np.shape(modes)}")
    a = a.astype(np.float64)
    if a.shape[2] == 3:
        a = np.concatenate([a, np.zeros(a.shape[:2] + (1,))], axis=2)
    a = np.ascontiguousarray(a)
    bad = ~np.isfinite(a)
    if bad.any():
        k, m, c = np.argwhere(bad)[0]
        raise ValueError(f"fourier_modes must be finite: class {k} mode {m} {_COLUMNS[c]} is {a[k, m, c]}")
    short = ~(a[:, :, 0] > 0)
    if short.any():
        k, m = np.argwhere(short)[0]
        raise ValueError(f"fourier_modes wavelengths must be positive (in pixels): class {k} mode {m} has "
                         f"{a[k, m, 0]}")
    # a wave of the pixel grid: at most half a cycle per pixel along rows and columns
    fast = np.maximum(np.abs(np.cos(a[:, :, 1])), np.abs(np.sin(a[:, :, 1]))) / a[:, :, 0] > 0.5 + 1e-12
    if fast.any():
        k, m = np.argwhere(fast)[0]
        raise ValueError(f"fourier_modes: class {k} mode {m} (wavelength {a[k, m, 0]}, orientation "
                         f"{a[k, m, 1]}) is faster than half a cycle per pixel along a row or column "
                         f"and aliases onto a longer wave; wavelengths must be >= 2 pixels "
                         f"(2 max(|cos|, |sin|) of the orientation)")
    return a


def fourier_patterns(modes, input_shape):
    """The (K, H*W) label patterns of a mode table, in float64: a NumPy twin of the C core's
    (``FFModel.label_patterns`` holds the float32 ones the core adds to the image)."""
    modes = np.asarray(modes, dtype=np.float64)
    if modes.ndim == 2:
        modes = modes[:, None, :]
    H, W = int(input_shape[1]), int(input_shape[2])
    h = np.arange(H, dtype=np.float64)[:, None]
    w = np.arange(W, dtype=np.float64)[None, :]
    out = np.zeros((modes.shape[0], H * W))
    for k in range(modes.shape[0]):
        for lam, th, a, ph in modes[k]:
            out[k] += (a * np.cos(2.0 * np.pi * (h * np.cos(th) + w * np.sin(th)) / lam + ph)).ravel()
    return out


def fit_fourier_modes(x, y, num_classes, modes_per_class=16, input_shape=None):
    """Fourier labels fitted to data: class k gets the ``modes_per_class`` strongest Fourier
    modes (largest DFT magnitude; the constant term and the Nyquist modes -0.5 left out) of
    T_k = mean image of class k - mean of all images (over channels), scaled so that every
    class pattern has root-mean-square 1 (``label_value`` then sets the label's energy).

    Why: the first block's goodness with an additive label l is, to first order in l, the
    label-free goodness plus <dG/dinput, l>, a correlation of the label pattern with a filtered
    image; plane waves unrelated to the classes give that correlation no class information,
    patterns shaped like T_k do.  Returns a float64 (K, M, 4) table for
    ``FFModel(..., fourier_modes=table)``.

    x: (N, C, H, W) or (N, C*H*W) with ``input_shape`` (C, H, W); y: (N,) ints in [0, K)."""
    K = int(num_classes)
    x = np.asarray(x)
    if input_shape is None:
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W) images, or give input_shape, got shape {x.shape}")
        input_shape = x.shape[1:]
    C, H, W = (int(v) for v in input_shape)
    if H * W < 2:
        raise ValueError(f"Fourier labels need images (H*W > 1), got input_shape {tuple(input_shape)}")
    if x.size == 0 or x.size % (C * H * W):
        raise ValueError(f"x must hold images of shape {(C, H, W)}, got shape {x.shape}")
    X = x.reshape(-1, C, H, W).astype(np.float64).mean(axis=1)
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind not in "iu" or len(y) != len(X):
        raise ValueError(f"y must be {len(X)} integer labels, got dtype {y.dtype} and {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"y must be in [0, {K}), got range [{y.min()}, {y.max()}]")
    missing = sorted(set(range(K)) - set(np.unique(y).tolist()))
    if missing:
        raise ValueError(f"every class needs samples to fit its modes; classes {missing} have none")
    fh, fw = np.fft.fftfreq(H), np.fft.fftfreq(W)
    # one of each conjugate pair, no constant term (and no Nyquist row/column of an even size)
    cand = [(i, j) for i in range(H) for j in range(W) if fh[i] > 0 or (fh[i] == 0 and fw[j] > 0)]
    M = int(modes_per_class)
    if not 1 <= M <= len(cand):
        raise ValueError(f"modes_per_class must be in [1, {len(cand)}] for {H}x{W} images, got {modes_per_class!r}")
    mu = X.mean(axis=0)
    out = np.zeros((K, M, 4))
    for k in range(K):
        F = np.fft.fft2(X[y == k].mean(axis=0) - mu)
        mag = np.array([abs(F[ij]) for ij in cand])
        for m, c in enumerate(np.argsort(-mag, kind="stable")[:M]):
            i, j = cand[c]
            f = np.hypot(fh[i], fw[j])
            # F[i,j] e^{2 pi i (fh h + fw w)} + conjugate = 2|F| cos(2 pi (fh h + fw w) + arg F)
            out[k, m] = (1.0 / f, np.arctan2(fw[j], fh[i]), 2.0 * abs(F[i, j]) / (H * W), np.angle(F[i, j]))
        rms = np.sqrt(np.mean(fourier_patterns(out[k:k + 1], (1, H, W)) ** 2))
        out[k, :, 2] /= rms if rms > 0 else 1.0
    return out
