/* _core.c - the one binding file: fflib's C core as the CPython module fflib._core.
 *
 * Every wrapper parses its arguments, checks each array (type, dtype, shape, C order,
 * alignment, writeability) with an error naming the argument, pulls raw pointers, releases
 * the GIL around the C work and turns an ff_status into a Python exception.  Arrays go into
 * C as they are (zero copy); nothing is converted here. */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
/* Python.h before any system header (it sets _POSIX_C_SOURCE); fflib.h before NumPy, which
 * pulls in <complex.h>, whose macro I would clash with the size letter */
#include <Python.h>
#include "fflib.h"
#include <numpy/arrayobject.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ errors and checks */

static PyObject *raise_status(ff_status st, const char *what) {
    PyObject *exc = PyExc_RuntimeError;
    switch (st) {
    case FF_ERR_NOMEM: exc = PyExc_MemoryError; break;
    case FF_ERR_ARG: case FF_ERR_SHAPE: case FF_ERR_LABEL: case FF_ERR_NONFINITE:
        exc = PyExc_ValueError; break;
    default: break;
    }
    PyErr_Format(exc, "%s: %s", what, ff_status_str(st));
    return NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const npy_intp *shape) {
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && used < n; i++) {
        if (shape[i] < 0) used += (size_t)snprintf(buf + used, n - used, "%s*", i ? ", " : "");
        else used += (size_t)snprintf(buf + used, n - used, "%s%ld", i ? ", " : "", (long)shape[i]);
    }
    if (used < n) snprintf(buf + used, n - used, ndim == 1 ? ",)" : ")");
}

/* Check that o is an ndarray of the given dtype, ndim and shape (-1: any extent), C-contiguous
 * and aligned, writeable if asked.  Returns it (borrowed) or NULL with an exception set. */
static PyArrayObject *check_array(PyObject *o, const char *name, int typenum, int ndim,
                                  const npy_intp *shape, int writable) {
    const char *tname = typenum == NPY_FLOAT32 ? "float32" : typenum == NPY_INT64 ? "int64"
                        : typenum == NPY_INT32 ? "int32" : typenum == NPY_UINT8 ? "uint8" : "?";
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of %s, got %s", name, tname,
                     Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != typenum) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got %s", name, tname,
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    int ok = PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && PyArray_DIM(a, i) != shape[i]) ok = 0;
    if (!ok) {
        char want[160], got[160];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", name, want, got);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous (numpy.ascontiguousarray makes a "
                     "contiguous copy)", name);
        return NULL;
    }
    if (!PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be aligned", name);
        return NULL;
    }
    if (!PyArray_ISNOTSWAPPED(a)) {   /* the core reads native values: '>f4' 1.0 would be 4.6e-41 */
        PyErr_Format(PyExc_ValueError, "%s has non-native byte order; convert it explicitly, e.g. "
                     "%s.astype(%s.dtype.newbyteorder('='))", name, name, name);
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s is read-only; an output array must be writeable", name);
        return NULL;
    }
    return a;
}

#define F32(a) ((float *)PyArray_DATA(a))
#define I64(a) ((int64_t *)PyArray_DATA(a))

/* Optional array: Py_None gives NULL data with no error. */
static int opt_array(PyObject *o, const char *name, int typenum, int ndim, const npy_intp *shape,
                     int writable, void **data) {
    *data = NULL;
    if (o == NULL || o == Py_None) return 0;
    PyArrayObject *a = check_array(o, name, typenum, ndim, shape, writable);
    if (!a) return -1;
    *data = PyArray_DATA(a);
    return 0;
}

static int check_finite(PyArrayObject *a, const char *name) {
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = ff_all_finite(F32(a), (size_t)PyArray_SIZE(a));
    Py_END_ALLOW_THREADS
    if (!ok) PyErr_Format(PyExc_ValueError, "%s contains NaN or infinity", name);
    return ok ? 0 : -1;
}

static int check_labels(PyArrayObject *y, const char *name, int K) {
    const int64_t *p = I64(y);
    for (npy_intp i = 0; i < PyArray_SIZE(y); i++)
        if (p[i] < 0 || p[i] >= K) {
            PyErr_Format(PyExc_ValueError, "%s[%ld] = %lld is out of range: labels must be in [0, %d)",
                         name, (long)i, (long long)p[i], K);
            return -1;
        }
    return 0;
}

/* ------------------------------------------------------------------ the Net type */

typedef struct {
    PyObject_HEAD
    ff_net *net;
    int busy;                 /* a call is running with the GIL released */
} NetObject;

static int net_enter(NetObject *self) {
    if (!self->net) { PyErr_SetString(PyExc_RuntimeError, "the net has been closed"); return -1; }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the net is in use by another thread; calls on one "
                        "net must not overlap");
        return -1;
    }
    self->busy = 1;
    return 0;
}
static void net_leave(NetObject *self) { self->busy = 0; }

/* Any method: the net exists (a bare Net.__new__ has none) and no GIL-free call is running on
 * it (the in-use guard: a second thread gets an error, never a race). */
static int net_check(NetObject *self) {
    if (!self->net) {
        PyErr_SetString(PyExc_RuntimeError, "the net is not initialised (construct it as Net(input_shape, "
                        "num_classes, seed))");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the net is in use by another thread; calls on one "
                        "net must not overlap");
        return -1;
    }
    return 0;
}
#define GUARD(self) do { if (net_check(self) < 0) return NULL; } while (0)

/* A failed core call: the exception type follows the status, the text is the core's own
 * reason (ff_net_last_error), prefixed by the operation. */
static PyObject *raise_net(NetObject *self, ff_status st, const char *what) {
    const char *msg = self->net ? ff_net_last_error(self->net) : "";
    if (!msg[0]) return raise_status(st, what);
    PyObject *exc = PyExc_ValueError;
    if (st == FF_ERR_NOMEM) exc = PyExc_MemoryError;
    else if (st == FF_ERR_STATE) exc = PyExc_RuntimeError;
    else if (st == FF_ERR_NONFINITE) exc = PyExc_FloatingPointError;
    PyErr_Format(exc, "%s: %s", what, msg);
    return NULL;
}

static PyObject *net_status(NetObject *self, ff_status st, const char *what) {
    if (st != FF_OK) return raise_net(self, st, what);
    Py_RETURN_NONE;
}

/* An int argument that must fit the core's int, with a message naming it. */
static int int_arg(PyObject *o, const char *name, int *out) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    if (overflow || v < INT_MIN || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s is out of range: %R", name, o);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int Net_init(NetObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"input_shape", "num_classes", "seed", NULL};
    PyObject *shape, *ko, *so = NULL;
    int dims[3], K;
    unsigned long long seed = 0;
    if (self->net) {
        PyErr_SetString(PyExc_RuntimeError, "Net.__init__ cannot be called again on a live net (its "
                        "memory may be viewed by arrays): build a new Net");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &shape, &ko, &so)) return -1;
    PyObject *seq = PySequence_Fast(shape, "input_shape must be a (C, H, W) tuple of ints");
    if (!seq) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 3) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "input_shape must be a (C, H, W) tuple of 3 ints, got %R", shape);
        return -1;
    }
    static const char *names[3] = {"input_shape[0] (C)", "input_shape[1] (H)", "input_shape[2] (W)"};
    for (int i = 0; i < 3; i++)
        if (int_arg(PySequence_Fast_GET_ITEM(seq, i), names[i], &dims[i]) < 0) { Py_DECREF(seq); return -1; }
    Py_DECREF(seq);
    if (int_arg(ko, "num_classes", &K) < 0) return -1;
    if (so) {
        seed = PyLong_AsUnsignedLongLong(so);
        if (seed == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "seed must be an int in [0, 2**64), got %R", so);
            return -1;
        }
    }
    char msg[256];
    ff_net *net;
    ff_status st = ff_net_new(&net, dims[0], dims[1], dims[2], K, (uint64_t)seed, msg, sizeof msg);
    if (st == FF_ERR_NOMEM) { PyErr_NoMemory(); return -1; }
    if (st != FF_OK) { PyErr_SetString(PyExc_ValueError, msg); return -1; }
    self->net = net;
    return 0;
}

static void Net_dealloc(NetObject *self) {
    ff_net_destroy(self->net);
    self->net = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *status_or_none(ff_status st, const char *what) {
    if (st != FF_OK) return raise_status(st, what);
    Py_RETURN_NONE;
}

static PyObject *Net_set_label_encoding(NetObject *self, PyObject *args) {
    GUARD(self);
    int kind;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "i", &kind)) return NULL;
    return net_status(self, ff_net_set_label_encoding(self->net, (ff_label_kind)kind), "label_encoding");
}

/* One float32 C-contiguous aligned native array of exactly n values for argument `name`, or NULL
 * with the Python exception set. */
static const float *input_affine_arg(PyObject *o, const char *name, int n) {
    if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32, got %s", name,
                     PyArray_Check(o) ? PyArray_DESCR((PyArrayObject *)o)->typeobj->tp_name : Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_SIZE(a) != n) {
        PyErr_Format(PyExc_ValueError, "%s must hold %d values (the input size), got %zd", name, n,
                     (Py_ssize_t)PyArray_SIZE(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous, aligned and native-endian", name);
        return NULL;
    }
    return (const float *)PyArray_DATA(a);
}

/* set_input_affine(scale, shift): two float32 arrays of the input size, or None, None (off). */
static PyObject *Net_set_input_affine(NetObject *self, PyObject *args) {
    GUARD(self);
    PyObject *so, *to;
    if (!PyArg_ParseTuple(args, "OO:set_input_affine", &so, &to)) return NULL;
    if ((so == Py_None) != (to == Py_None))
        return PyErr_Format(PyExc_ValueError, "input affine: give both scale and shift, or neither (None, None)");
    const float *sc = NULL, *sh = NULL;
    if (so != Py_None) {
        int D = ff_net_input_size(self->net);
        if (!(sc = input_affine_arg(so, "scale", D)) || !(sh = input_affine_arg(to, "shift", D))) return NULL;
    }
    return net_status(self, ff_net_set_input_affine(self->net, sc, sh), "input_affine");
}

/* (scale, shift) copies, or None when the net has no input affine map. */
static PyObject *Net_input_affine(NetObject *self, PyObject *Py_UNUSED(ignored)) {
    GUARD(self);
    const float *sh = NULL, *sc = ff_net_input_affine(self->net, &sh);
    if (!sc) Py_RETURN_NONE;
    npy_intp n = ff_net_input_size(self->net);
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_FLOAT32), *b = PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (!a || !b) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    memcpy(PyArray_DATA((PyArrayObject *)a), sc, (size_t)n * sizeof(float));
    memcpy(PyArray_DATA((PyArrayObject *)b), sh, (size_t)n * sizeof(float));
    return Py_BuildValue("(NN)", a, b);
}

/* modes: None (the default table) or a float64 C-contiguous (K, M, 4) array. */
static PyObject *Net_set_fourier_modes(NetObject *self, PyObject *o) {
    GUARD(self);
    const double *m = NULL;
    int M = 1;
    if (o != Py_None) {
        int K = ff_net_num_classes(self->net);
        if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT64)
            return PyErr_Format(PyExc_TypeError, "fourier_modes must be a numpy.ndarray of float64, got %s",
                                PyArray_Check(o) ? PyArray_DESCR((PyArrayObject *)o)->typeobj->tp_name
                                                 : Py_TYPE(o)->tp_name);
        PyArrayObject *a = (PyArrayObject *)o;
        if (PyArray_NDIM(a) != 3 || PyArray_DIM(a, 0) != K || PyArray_DIM(a, 1) < 1 ||
            PyArray_DIM(a, 1) > FF_MAX_FOURIER_MODES || PyArray_DIM(a, 2) != 4) {
            char got[160];
            shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
            return PyErr_Format(PyExc_ValueError, "fourier_modes must have shape (%d, M, 4) with 1 <= M <= %d, "
                                "got %s", K, FF_MAX_FOURIER_MODES, got);
        }
        if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a))
            return PyErr_Format(PyExc_ValueError, "fourier_modes must be C-contiguous, aligned and native-endian");
        m = (const double *)PyArray_DATA(a);
        M = (int)PyArray_DIM(a, 1);
    }
    return net_status(self, ff_net_set_fourier_modes(self->net, m, M), "fourier_modes");
}

/* A copy of the (K, M, 4) Fourier mode table, or None. */
static PyObject *Net_fourier_modes(NetObject *self, PyObject *Py_UNUSED(ignored)) {
    GUARD(self);
    int M = 0;
    const double *m = ff_net_fourier_modes(self->net, &M);
    if (!m) Py_RETURN_NONE;
    npy_intp dims[3] = {ff_net_num_classes(self->net), M, 4};
    PyObject *arr = PyArray_SimpleNew(3, dims, NPY_FLOAT64);
    if (arr) memcpy(PyArray_DATA((PyArrayObject *)arr), m, (size_t)dims[0] * M * 4 * sizeof(double));
    return arr;
}

/* A copy of the (K, H*W) label patterns of a finalized Fourier net, or None. */
static PyObject *Net_label_patterns(NetObject *self, PyObject *Py_UNUSED(ignored)) {
    GUARD(self);
    int HW = 0;
    const float *p = ff_net_label_patterns(self->net, &HW);
    if (!p) Py_RETURN_NONE;
    npy_intp dims[2] = {ff_net_num_classes(self->net), HW};
    PyObject *arr = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (arr) memcpy(PyArray_DATA((PyArrayObject *)arr), p, (size_t)dims[0] * dims[1] * sizeof(float));
    return arr;
}

static PyObject *Net_add_linear(NetObject *self, PyObject *args) {
    GUARD(self);
    int out, bias = 1;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "i|p", &out, &bias)) return NULL;
    return net_status(self, ff_net_add_linear(self->net, out, bias), "add_linear");
}

static PyObject *Net_add_conv2d(NetObject *self, PyObject *args) {
    GUARD(self);
    int out, k, stride, pad, groups, bias;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "iiiiip", &out, &k, &stride, &pad, &groups, &bias)) return NULL;
    return net_status(self, ff_net_add_conv2d(self->net, out, k, stride, pad, groups, bias), "add_conv2d");
}

static PyObject *Net_add_batchnorm2d(NetObject *self, PyObject *args) {
    GUARD(self);
    float eps, mom; int affine;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "ffp", &eps, &mom, &affine)) return NULL;
    return net_status(self, ff_net_add_batchnorm2d(self->net, eps, mom, affine), "add_batchnorm2d");
}

static PyObject *Net_add_relu(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    return net_status(self, ff_net_add_relu(self->net), "add_relu");
}

static PyObject *Net_add_maxpool2d(NetObject *self, PyObject *args) {
    GUARD(self);
    int k, s;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "ii", &k, &s)) return NULL;
    return net_status(self, ff_net_add_maxpool2d(self->net, k, s), "add_maxpool2d");
}

static PyObject *Net_add_lennorm(NetObject *self, PyObject *args) {
    GUARD(self);
    int kind; float eps;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "if", &kind, &eps)) return NULL;
    return net_status(self, ff_net_add_lennorm(self->net, (ff_norm_kind)kind, eps), "add_lennorm");
}

static PyObject *Net_add_flatten(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    return net_status(self, ff_net_add_flatten(self->net), "add_flatten");
}

/* Read a Python sequence of ints into buf (at most cap). */
static int int_list(PyObject *o, const char *name, int *buf, int cap, int *n) {
    PyObject *seq = PySequence_Fast(o, "");
    if (!seq) {
        PyErr_Format(PyExc_TypeError, "%s must be a sequence of ints", name);
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (len > cap) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, at most %d allowed", name, len, cap);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "%s must be a sequence of ints", name);
            return -1;
        }
        buf[i] = (int)v;
    }
    *n = (int)len;
    Py_DECREF(seq);
    return 0;
}

static PyObject *Net_set_head(NetObject *self, PyObject *args) {
    GUARD(self);
    PyObject *o; int sel[256], n;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "O", &o) || int_list(o, "head layers", sel, 256, &n) < 0) return NULL;
    return net_status(self, ff_net_set_head(self->net, n, sel), "head_blocks");
}

static PyObject *Net_set_decoders(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    return net_status(self, ff_net_set_decoders(self->net), "decoders");
}

static PyObject *Net_num_decoders(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    return PyLong_FromLong(ff_net_num_decoders(self->net));
}

static PyObject *Net_finalize(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_finalize(self->net);
    net_leave(self);
    return net_status(self, st, "finalize");
}

static PyObject *Net_set_blocks(NetObject *self, PyObject *args) {
    GUARD(self);
    PyObject *o; int ends[256], n;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "O", &o) || int_list(o, "block ends", ends, 256, &n) < 0) return NULL;
    if (n == 0) return PyErr_Format(PyExc_ValueError, "blocks: block ends must not be empty");
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_set_blocks(self->net, n, ends);
    net_leave(self);
    return net_status(self, st, "blocks");
}

static PyObject *Net_default_blocks(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    int ends[256];
    if (ff_net_num_layers(self->net) == 0) return PyList_New(0);
    int nb = ff_net_default_blocks(self->net, ends);
    PyObject *l = PyList_New(nb);
    if (!l) return NULL;
    for (int b = 0; b < nb; b++) PyList_SET_ITEM(l, b, PyLong_FromLong(ends[b]));
    return l;
}

static PyObject *Net_set_block_ranges(NetObject *self, PyObject *args) {
    GUARD(self);
    PyObject *fo, *lo; int firsts[256], lasts[256], nf, nl;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "OO", &fo, &lo) || int_list(fo, "block firsts", firsts, 256, &nf) < 0 ||
        int_list(lo, "block lasts", lasts, 256, &nl) < 0) return NULL;
    if (nf != nl || nf == 0) return PyErr_Format(PyExc_ValueError, "block ranges: need one (first, last) per block");
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_set_block_ranges(self->net, nf, firsts, lasts);
    net_leave(self);
    return net_status(self, st, "block ranges");
}

static PyObject *Net_blocks(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    int nb = ff_net_num_blocks(self->net);
    PyObject *l = PyList_New(nb);
    if (!l) return NULL;
    for (int b = 0; b < nb; b++) {
        int f, e;
        ff_net_block_range(self->net, b, &f, &e);
        PyList_SET_ITEM(l, b, Py_BuildValue("(ii)", f, e));
    }
    return l;
}

static PyObject *Net_set_config(NetObject *self, PyObject *args, PyObject *kw) {
    GUARD(self);
    static char *kwlist[] = {"loss", "goodness", "theta", "alpha", "norm", "norm_eps",
                             "label_value", "pvn_weight", "margin", "head_dropout", NULL};
    GUARD(self);
    ff_config c = ff_net_get_config(self->net);
    int loss = c.loss, good = c.goodness, norm = c.norm;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|iiffifffff", kwlist, &loss, &good, &c.theta,
                                     &c.alpha, &norm, &c.norm_eps, &c.label_value, &c.pvn_weight,
                                     &c.margin, &c.head_dropout))
        return NULL;
    c.loss = (ff_loss_kind)loss; c.goodness = (ff_goodness_kind)good; c.norm = (ff_norm_kind)norm;
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_set_config(self->net, &c);
    net_leave(self);
    return net_status(self, st, "config");
}

static PyObject *Net_set_block_loss(NetObject *self, PyObject *args, PyObject *kw) {
    GUARD(self);
    static char *kwlist[] = {"block", "loss", "goodness", "theta", "alpha", "pvn_weight", NULL};
    int b, loss, good;
    float theta, alpha, pvn;
    GUARD(self);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiifff", kwlist, &b, &loss, &good, &theta, &alpha, &pvn))
        return NULL;
    return net_status(self, ff_net_set_block_loss(self->net, b, (ff_loss_kind)loss, (ff_goodness_kind)good,
                                                  theta, alpha, pvn), "block loss");
}

static PyObject *Net_get_config(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    ff_config c = ff_net_get_config(self->net);
    return Py_BuildValue("{s:i,s:i,s:d,s:d,s:i,s:d,s:d,s:d,s:d,s:d}", "loss", (int)c.loss, "goodness",
                         (int)c.goodness, "theta", (double)c.theta, "alpha", (double)c.alpha,
                         "norm", (int)c.norm, "norm_eps", (double)c.norm_eps, "label_value",
                         (double)c.label_value, "pvn_weight", (double)c.pvn_weight, "margin",
                         (double)c.margin, "head_dropout", (double)c.head_dropout);
}

static PyObject *Net_set_opt(NetObject *self, PyObject *args, PyObject *kw) {
    GUARD(self);
    static char *kwlist[] = {"layer", "kind", "lr", "beta1", "beta2", "eps", "momentum",
                             "dampening", "nesterov", "weight_decay", NULL};
    int layer, kind, nesterov = 0;
    ff_opt_config o = ff_opt_config_default();
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii|ffffffpf", kwlist, &layer, &kind, &o.lr,
                                     &o.beta1, &o.beta2, &o.eps, &o.momentum, &o.dampening,
                                     &nesterov, &o.weight_decay))
        return NULL;
    o.kind = (ff_opt_kind)kind; o.nesterov = nesterov;
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_set_opt(self->net, layer, &o);
    net_leave(self);
    return net_status(self, st, "optimizer");
}

static PyObject *Net_get_opt(NetObject *self, PyObject *args) {
    GUARD(self);
    int layer; ff_opt_config o;
    if (!PyArg_ParseTuple(args, "i", &layer)) return NULL;
    if (ff_net_get_opt(self->net, layer, &o) != FF_OK)
        return PyErr_Format(PyExc_IndexError, "%s", ff_net_last_error(self->net));
    return Py_BuildValue("{s:i,s:d,s:d,s:d,s:d,s:d,s:d,s:O,s:d}", "kind", (int)o.kind, "lr",
                         (double)o.lr, "beta1", (double)o.beta1, "beta2", (double)o.beta2, "eps",
                         (double)o.eps, "momentum", (double)o.momentum, "dampening",
                         (double)o.dampening, "nesterov", o.nesterov ? Py_True : Py_False,
                         "weight_decay", (double)o.weight_decay);
}

static PyObject *Net_get_step(NetObject *self, PyObject *args) {
    GUARD(self);
    int layer;
    if (!PyArg_ParseTuple(args, "i", &layer)) return NULL;
    long t = ff_net_get_step(self->net, layer);
    if (t < 0) return PyErr_Format(PyExc_IndexError, "no layer %d", layer);
    return PyLong_FromLong(t);
}

static PyObject *Net_set_step(NetObject *self, PyObject *args) {
    GUARD(self);
    int layer; long t;
    if (!PyArg_ParseTuple(args, "il", &layer, &t)) return NULL;
    return net_status(self, ff_net_set_step(self->net, layer, t), "step");
}

static PyObject *Net_get_rng(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    uint64_t s[4];
    ff_net_get_rng(self->net, s);
    return Py_BuildValue("(KKKK)", (unsigned long long)s[0], (unsigned long long)s[1],
                         (unsigned long long)s[2], (unsigned long long)s[3]);
}

static PyObject *Net_set_rng(NetObject *self, PyObject *args) {
    GUARD(self);
    unsigned long long a, b, c, d;
    if (!PyArg_ParseTuple(args, "(KKKK)", &a, &b, &c, &d)) return NULL;
    if (!(a | b | c | d)) return PyErr_Format(PyExc_ValueError, "rng state must not be all zero");
    uint64_t s[4] = {a, b, c, d};
    ff_net_set_rng(self->net, s);
    Py_RETURN_NONE;
}

static PyObject *Net_set_training(NetObject *self, PyObject *args) {
    GUARD(self);
    int t;
    if (!PyArg_ParseTuple(args, "p", &t)) return NULL;
    ff_net_set_training(self->net, t);
    Py_RETURN_NONE;
}

static PyObject *Net_param(NetObject *self, PyObject *args) {
    GUARD(self);
    int layer, which;
    if (!PyArg_ParseTuple(args, "ii", &layer, &which)) return NULL;
    if (which < 0 || which > FF_P_V_BIAS) return PyErr_Format(PyExc_ValueError, "bad parameter kind %d", which);
    size_t n;
    float *p = ff_net_param(self->net, layer, (ff_param_kind)which, &n);
    if (!p) Py_RETURN_NONE;
    npy_intp dims[4];
    int nd = 1;
    dims[0] = (npy_intp)n;
    int w = which == FF_P_WEIGHT || which == FF_P_GRAD_WEIGHT || which == FF_P_M_WEIGHT ||
            which == FF_P_V_WEIGHT;
    ff_layer_info li;
    if (w && layer == -2) {   /* label embedding (K, H*W) */
        nd = 2; dims[0] = ff_net_num_classes(self->net); dims[1] = (npy_intp)n / dims[0];
    } else if (w && ff_net_layer_info(self->net, layer, &li) == FF_OK) {
        if (li.kind == FF_LAYER_LINEAR) { nd = 2; dims[0] = li.OC; dims[1] = (npy_intp)li.C * li.H * li.W; }
        else if (li.kind == FF_LAYER_CONV2D) {
            nd = 4; dims[0] = li.OC; dims[1] = li.C / li.groups; dims[2] = dims[3] = li.kernel;
        }
    }
    PyObject *arr = PyArray_SimpleNewFromData(nd, dims, NPY_FLOAT32, p);
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) { Py_DECREF(arr); return NULL; }
    return arr;
}

/* x: (B, D) float32 (or any shape whose trailing dims multiply to D) */
static PyArrayObject *check_input(NetObject *self, PyObject *o, const char *name, npy_intp *B) {
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32, got %s", name, Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    int D = ff_net_input_size(self->net);
    if (PyArray_NDIM(a) < 2) {
        PyErr_Format(PyExc_ValueError, "%s must have shape (B, %d) or (B, C, H, W) with C*H*W = %d, "
                     "got %d dimension(s)", name, D, D, PyArray_NDIM(a));
        return NULL;
    }
    npy_intp per = 1;
    for (int i = 1; i < PyArray_NDIM(a); i++) per *= PyArray_DIM(a, i);
    if (per != D) {
        char got[160];
        shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "%s must have %d values per sample (the net's input size), got "
                     "shape %s", name, D, got);
        return NULL;
    }
    npy_intp shp[8];
    for (int i = 0; i < PyArray_NDIM(a) && i < 8; i++) shp[i] = PyArray_DIM(a, i);
    shp[0] = -1;
    if (!check_array(o, name, NPY_FLOAT32, PyArray_NDIM(a), shp, 0)) return NULL;
    *B = PyArray_DIM(a, 0);
    if (*B == 0) { PyErr_Format(PyExc_ValueError, "%s is an empty batch (0 samples)", name); return NULL; }
    if (*B > 1 << 28) { PyErr_Format(PyExc_ValueError, "%s has too many samples for one call", name); return NULL; }
    if (check_finite(a, name) < 0) return NULL;
    return a;
}

static PyArrayObject *check_x(NetObject *self, PyObject *o, npy_intp *B) { return check_input(self, o, "x", B); }

static int finalized(NetObject *self) {
    if (ff_net_num_blocks(self->net) == 0) {
        PyErr_SetString(PyExc_RuntimeError, "the net must be finalized first");
        return 0;
    }
    return 1;
}

/* The arrays of a training call: x (B, D) float32, labels (B) int64, neg_labels (B) or None. */
static int training_batch(NetObject *self, PyObject *xo, PyObject *yo, PyObject *no, npy_intp *B,
                          PyArrayObject **x, void **y, void **neg) {
    if (!(*x = check_x(self, xo, B))) return -1;
    npy_intp shB[1] = {*B};
    if (opt_array(yo, "labels", NPY_INT64, 1, shB, 0, y) < 0) return -1;   /* ranges: checked in C */
    return opt_array(no, "neg_labels", NPY_INT64, 1, shB, 0, neg);
}

static PyObject *Net_train_step(NetObject *self, PyObject *args, PyObject *kw) {
    GUARD(self);
    static char *kwlist[] = {"x", "labels", "neg_labels", "active", "train_head", "apply_update", "x_neg", "out", NULL};
    PyObject *xo, *yo, *no = Py_None, *ao = Py_None, *xno = Py_None, *oo = Py_None;
    int head = 0, apply = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOppOO", kwlist, &xo, &yo, &no, &ao, &head, &apply, &xno, &oo))
        return NULL;
    if (!finalized(self)) return NULL;
    npy_intp B;
    PyArrayObject *x;
    void *y = NULL, *neg = NULL, *act = NULL, *xneg = NULL, *out = NULL;
    if (training_batch(self, xo, yo, no, &B, &x, &y, &neg) < 0) return NULL;
    if (xno != Py_None) {
        npy_intp Bn;
        PyArrayObject *xn = check_input(self, xno, "x_neg", &Bn);
        if (!xn) return NULL;
        if (Bn != B)
            return PyErr_Format(PyExc_ValueError, "x_neg must have as many samples as x (%zd), got %zd",
                                (Py_ssize_t)B, (Py_ssize_t)Bn);
        xneg = PyArray_DATA(xn);
    } else if (!y && ff_net_get_config(self->net).loss != FF_LOSS_AE) {   /* ae: label-free */
        return PyErr_Format(PyExc_TypeError, "labels must be a numpy.ndarray of int64 (only a step with "
                            "x_neg, or with the ae loss, may pass labels=None)");
    }
    int nb = ff_net_num_blocks(self->net);
    npy_intp shA[1] = {nb};
    if (opt_array(ao, "active", NPY_UINT8, 1, shA, 0, &act) < 0) return NULL;
    if (head && !ff_net_has_head(self->net))
        return PyErr_Format(PyExc_ValueError, "train_head=True but the net has no one-pass head");
    if (oo != Py_None) {
        /* rows: ff_net_train_rows (positive and negative, every label for df, or the labelled rows) */
        npy_intp shO[2] = {ff_net_train_rows(self->net, (int)B), ff_net_train_out_size(self->net, (const uint8_t *)act)};
        if (opt_array(oo, "out", NPY_FLOAT32, 2, shO, 1, &out) < 0) return NULL;
    }
    npy_intp shL[1] = {nb + 1};
    PyArrayObject *losses = (PyArrayObject *)PyArray_ZEROS(1, shL, NPY_FLOAT32, 0);
    if (!losses) return NULL;
    if (net_enter(self) < 0) { Py_DECREF(losses); return NULL; }
    ff_status st;
    ff_train_args ta = {F32(x), (const float *)xneg, (const int64_t *)y, (const int64_t *)neg, (int)B,
                        (const uint8_t *)act, head, apply, F32(losses), (float *)out};
    Py_BEGIN_ALLOW_THREADS
    st = ff_net_train(self->net, &ta);
    Py_END_ALLOW_THREADS
    net_leave(self);
    if (st != FF_OK) {
        Py_DECREF(losses);
        return raise_net(self, st, "train_step");
    }
    return (PyObject *)losses;
}

/* Not guarded: read while a GIL-free step runs in another thread. */
static PyObject *Net_progress(NetObject *self, PyObject *Py_UNUSED(a)) {
    if (!self->net) return PyLong_FromLong(0);
    return PyLong_FromLong(ff_net_progress(self->net));
}

static PyObject *Net_train_out_size(NetObject *self, PyObject *args) {
    GUARD(self);
    PyObject *ao = Py_None; void *act = NULL;
    if (!PyArg_ParseTuple(args, "|O", &ao)) return NULL;
    if (!finalized(self)) return NULL;
    npy_intp shA[1] = {ff_net_num_blocks(self->net)};
    if (opt_array(ao, "active", NPY_UINT8, 1, shA, 0, &act) < 0) return NULL;
    return PyLong_FromLong(ff_net_train_out_size(self->net, (const uint8_t *)act));
}

static PyObject *Net_optimizer_step(NetObject *self, PyObject *args, PyObject *kw) {
    GUARD(self);
    static char *kwlist[] = {"active", "head", NULL};
    PyObject *ao = Py_None; int head = 0; void *act = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Op", kwlist, &ao, &head)) return NULL;
    if (!finalized(self)) return NULL;
    npy_intp shA[1] = {ff_net_num_blocks(self->net)};
    if (opt_array(ao, "active", NPY_UINT8, 1, shA, 0, &act) < 0) return NULL;
    if (head && !ff_net_has_head(self->net))
        return PyErr_Format(PyExc_ValueError, "head=True but the net has no one-pass head");
    if (net_enter(self) < 0) return NULL;
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_net_optimizer_step(self->net, (const uint8_t *)act, head);
    Py_END_ALLOW_THREADS
    net_leave(self);
    return net_status(self, st, "optimizer_step");
}

static PyObject *Net_zero_grad(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    if (!finalized(self)) return NULL;
    ff_net_zero_grad(self->net);
    Py_RETURN_NONE;
}

static PyObject *Net_check_grad(NetObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "labels", "neg_labels", "block", "eps", "seed", NULL};
    PyObject *xo, *yo, *no = Py_None;
    int head = 0;   /* the block index */
    float eps = 1e-3f;
    unsigned long long seed = 0;
    GUARD(self);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OifK", kwlist, &xo, &yo, &no, &head, &eps, &seed))
        return NULL;
    if (!finalized(self)) return NULL;
    npy_intp B;
    PyArrayObject *x;
    void *y = NULL, *neg = NULL;
    if (training_batch(self, xo, yo, no, &B, &x, &y, &neg) < 0) return NULL;
    if (!y) return PyErr_Format(PyExc_TypeError, "labels must be a numpy.ndarray of int64, got None");
    double fd = 0, an = 0, rel = 0;
    if (net_enter(self) < 0) return NULL;
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_net_check_grad(self->net, F32(x), (const int64_t *)y, (const int64_t *)neg, (int)B, head, eps,
                           (uint64_t)seed, &fd, &an, &rel);
    Py_END_ALLOW_THREADS
    net_leave(self);
    if (st != FF_OK) return raise_net(self, st, "check_grad");
    return Py_BuildValue("(ddd)", fd, an, rel);
}

static PyObject *Net_pipeline_begin(NetObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"max_batch", "active", "train_head", NULL};
    int max_batch, head = 0;
    PyObject *ao = Py_None;
    void *act = NULL;
    GUARD(self);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|Op", kwlist, &max_batch, &ao, &head)) return NULL;
    if (!finalized(self)) return NULL;
    npy_intp shA[1] = {ff_net_num_blocks(self->net)};
    if (opt_array(ao, "active", NPY_UINT8, 1, shA, 0, &act) < 0) return NULL;
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_pipeline_begin(self->net, max_batch, (const uint8_t *)act, head);
    net_leave(self);
    return net_status(self, st, "pipeline_begin");
}

static PyObject *Net_pipeline_step(NetObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "labels", "neg_labels", NULL};
    PyObject *xo = Py_None, *yo = Py_None, *no = Py_None;
    GUARD(self);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOO", kwlist, &xo, &yo, &no)) return NULL;
    if (!finalized(self)) return NULL;
    npy_intp B = 0;
    PyArrayObject *x = NULL;
    void *y = NULL, *neg = NULL;
    if (xo != Py_None && training_batch(self, xo, yo, no, &B, &x, &y, &neg) < 0) return NULL;
    if (x && !y) return PyErr_Format(PyExc_TypeError, "labels must be a numpy.ndarray of int64, got None");
    npy_intp shL[1] = {ff_net_num_blocks(self->net) + 1};
    PyArrayObject *losses = (PyArrayObject *)PyArray_ZEROS(1, shL, NPY_FLOAT32, 0);
    if (!losses) return NULL;
    if (net_enter(self) < 0) { Py_DECREF(losses); return NULL; }
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_net_pipeline_step(self->net, x ? F32(x) : NULL, (const int64_t *)y, (const int64_t *)neg, (int)B,
                              F32(losses));
    Py_END_ALLOW_THREADS
    net_leave(self);
    if (st != FF_OK) { Py_DECREF(losses); return raise_net(self, st, "pipeline_step"); }
    return (PyObject *)losses;
}

static PyObject *Net_set_share_labels(NetObject *self, PyObject *args) {
    int on;
    GUARD(self);
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_set_share_labels(self->net, on);
    net_leave(self);
    return net_status(self, st, "share_labels");
}

static PyObject *Net_pipeline_in_flight(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    return PyLong_FromLong(ff_net_pipeline_in_flight(self->net));
}

static PyObject *Net_pipeline_end(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    ff_net_pipeline_end(self->net);
    Py_RETURN_NONE;
}

/* Shared shape of the inference calls: x in, a fresh float32 array out. */
typedef enum { INF_GOODNESS, INF_GOODNESS_LABELED, INF_FEATURES, INF_HEAD } inf_kind;

static PyObject *inference(NetObject *self, PyObject *args, inf_kind kind) {
    PyObject *xo, *yo = Py_None;
    if (!PyArg_ParseTuple(args, kind == INF_GOODNESS_LABELED ? "O|O" : "O", &xo, &yo)) return NULL;
    if (!finalized(self)) return NULL;
    npy_intp B;
    PyArrayObject *x = check_x(self, xo, &B);
    if (!x) return NULL;
    int K = ff_net_num_classes(self->net), nb = ff_net_num_blocks(self->net);
    void *lab = NULL;
    if (kind == INF_GOODNESS_LABELED) {
        npy_intp shB[1] = {B};
        if (opt_array(yo, "labels", NPY_INT64, 1, shB, 0, &lab) < 0) return NULL;
    }
    if ((kind == INF_FEATURES || kind == INF_HEAD) && !ff_net_has_head(self->net))
        return PyErr_Format(PyExc_ValueError, "the net has no one-pass head (features and one-pass "
                            "prediction need one)");
    npy_intp dims[3];
    int nd;
    switch (kind) {
    case INF_GOODNESS: nd = 3; dims[0] = B; dims[1] = K; dims[2] = nb; break;
    case INF_GOODNESS_LABELED: nd = 2; dims[0] = B; dims[1] = nb; break;
    case INF_FEATURES: nd = 2; dims[0] = B; dims[1] = ff_net_feature_size(self->net); break;
    default: nd = 2; dims[0] = B; dims[1] = K; break;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(nd, dims, NPY_FLOAT32, 0);
    if (!out) return NULL;
    if (net_enter(self) < 0) { Py_DECREF(out); return NULL; }
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    switch (kind) {
    case INF_GOODNESS: st = ff_net_goodness(self->net, F32(x), (int)B, F32(out)); break;
    case INF_GOODNESS_LABELED:
        st = ff_net_goodness_labeled(self->net, F32(x), (const int64_t *)lab, (int)B, F32(out)); break;
    case INF_FEATURES: st = ff_net_features(self->net, F32(x), (int)B, F32(out)); break;
    default: st = ff_net_head_predict(self->net, F32(x), (int)B, F32(out)); break;
    }
    Py_END_ALLOW_THREADS
    net_leave(self);
    if (st != FF_OK) { Py_DECREF(out); return raise_net(self, st, "inference"); }
    return (PyObject *)out;
}

static PyObject *Net_goodness(NetObject *self, PyObject *args) {
    GUARD(self); return inference(self, args, INF_GOODNESS); }
static PyObject *Net_goodness_labeled(NetObject *self, PyObject *args) {
    GUARD(self); return inference(self, args, INF_GOODNESS_LABELED); }
static PyObject *Net_features(NetObject *self, PyObject *args) {
    GUARD(self); return inference(self, args, INF_FEATURES); }
static PyObject *Net_head_predict(NetObject *self, PyObject *args) {
    GUARD(self); return inference(self, args, INF_HEAD); }

/* predict_early_exit(x, onepass, rule, thresholds) -> (pred int64 (B,), blocks_used int32 (B,)) */
static PyObject *Net_predict_early_exit(NetObject *self, PyObject *args) {
    GUARD(self);
    PyObject *xo, *to;
    int onepass, rule;
    if (!PyArg_ParseTuple(args, "OpiO", &xo, &onepass, &rule, &to)) return NULL;
    if (!finalized(self)) return NULL;
    npy_intp B;
    PyArrayObject *x = check_x(self, xo, &B);
    if (!x) return NULL;
    npy_intp nb[1] = {ff_net_num_blocks(self->net)};
    PyArrayObject *t = check_array(to, "thresholds", NPY_FLOAT64, 1, nb, 0);
    if (!t) return NULL;
    if (B == 0) return PyErr_Format(PyExc_ValueError, "x must hold at least one sample");
    npy_intp dims[1] = {B};
    PyArrayObject *pred = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_INT64, 0);
    PyArrayObject *used = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_INT32, 0);
    if (!pred || !used) goto fail;
    if (net_enter(self) < 0) goto fail;
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_net_predict_early_exit(self->net, F32(x), (int)B, onepass, rule, (const double *)PyArray_DATA(t),
                                   I64(pred), (int32_t *)PyArray_DATA(used));
    Py_END_ALLOW_THREADS
    net_leave(self);
    if (st != FF_OK) { raise_net(self, st, "early-exit prediction"); goto fail; }
    return Py_BuildValue("(NN)", pred, used);
fail:
    Py_XDECREF(pred); Py_XDECREF(used);
    return NULL;
}

static PyObject *Net_info(NetObject *self, PyObject *Py_UNUSED(a)) {
    GUARD(self);
    ff_net *n = self->net;
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:n,s:n}", "num_layers", ff_net_num_layers(n),
                         "num_blocks", ff_net_num_blocks(n), "num_classes", ff_net_num_classes(n),
                         "input_size", ff_net_input_size(n), "feature_size", ff_net_feature_size(n),
                         "has_head", ff_net_has_head(n), "num_params", (Py_ssize_t)ff_net_num_params(n),
                         "workspace_bytes", (Py_ssize_t)ff_net_workspace_bytes(n));
}

static PyObject *Net_layer_info(NetObject *self, PyObject *args) {
    GUARD(self);
    int i; ff_layer_info li;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    if (ff_net_layer_info(self->net, i, &li) != FF_OK) return PyErr_Format(PyExc_IndexError, "no layer %d", i);
    return Py_BuildValue("{s:i,s:(iii),s:(iii),s:i,s:i,s:i,s:i,s:i}", "kind", (int)li.kind, "in_shape", li.C,
                         li.H, li.W, "out_shape", li.OC, li.OH, li.OW, "kernel", li.kernel, "stride", li.stride,
                         "pad", li.pad, "groups", li.groups, "bias", li.bias);
}

static PyObject *Net_layer_shape(NetObject *self, PyObject *args) {
    GUARD(self);
    int i, C, H, W;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    if (i < 0 || i >= ff_net_num_layers(self->net)) return PyErr_Format(PyExc_IndexError, "no layer %d", i);
    ff_net_layer_shape(self->net, i, &C, &H, &W);
    return Py_BuildValue("(iii)", C, H, W);
}

static PyObject *Net_reserve(NetObject *self, PyObject *args) {
    GUARD(self);
    int rows;
    if (!PyArg_ParseTuple(args, "i", &rows)) return NULL;
    if (rows <= 0) return PyErr_Format(PyExc_ValueError, "rows must be positive, got %d", rows);
    if (!finalized(self)) return NULL;
    if (net_enter(self) < 0) return NULL;
    ff_status st = ff_net_reserve(self->net, rows);
    net_leave(self);
    return net_status(self, st, "reserve");
}

static PyMethodDef Net_methods[] = {
    {"predict_early_exit", (PyCFunction)Net_predict_early_exit, METH_VARARGS,
     "predict_early_exit(x, onepass, rule, thresholds) -> (pred, blocks_used)"},
    {"set_label_encoding", (PyCFunction)Net_set_label_encoding, METH_VARARGS, "set_label_encoding(kind)"},
    {"set_input_affine", (PyCFunction)Net_set_input_affine, METH_VARARGS,
     "set_input_affine(scale, shift): x * scale + shift on every raw input value (float32, D each), or None, None"},
    {"input_affine", (PyCFunction)Net_input_affine, METH_NOARGS, "input_affine() -> (scale, shift) float32 or None"},
    {"set_fourier_modes", (PyCFunction)Net_set_fourier_modes, METH_O, "set_fourier_modes(modes or None)"},
    {"fourier_modes", (PyCFunction)Net_fourier_modes, METH_NOARGS, "fourier_modes() -> (K, M, 4) float64 or None"},
    {"label_patterns", (PyCFunction)Net_label_patterns, METH_NOARGS, "label_patterns() -> (K, H*W) float32 or None"},
    {"add_linear", (PyCFunction)Net_add_linear, METH_VARARGS, "add_linear(out_features, bias=True)"},
    {"add_conv2d", (PyCFunction)Net_add_conv2d, METH_VARARGS, "add_conv2d(out, kernel, stride, pad, groups, bias)"},
    {"add_batchnorm2d", (PyCFunction)Net_add_batchnorm2d, METH_VARARGS, "add_batchnorm2d(eps, momentum, affine)"},
    {"add_relu", (PyCFunction)Net_add_relu, METH_NOARGS, "add_relu()"},
    {"add_maxpool2d", (PyCFunction)Net_add_maxpool2d, METH_VARARGS, "add_maxpool2d(kernel, stride)"},
    {"add_lennorm", (PyCFunction)Net_add_lennorm, METH_VARARGS, "add_lennorm(kind, eps)"},
    {"add_flatten", (PyCFunction)Net_add_flatten, METH_NOARGS, "add_flatten()"},
    {"set_head", (PyCFunction)Net_set_head, METH_VARARGS, "set_head(layers): one-pass head input layers"},
    {"set_decoders", (PyCFunction)Net_set_decoders, METH_NOARGS,
     "set_decoders(): a linear decoder per block for the ae loss (before finalize)"},
    {"num_decoders", (PyCFunction)Net_num_decoders, METH_NOARGS, "num_decoders() -> int"},
    {"finalize", (PyCFunction)Net_finalize, METH_NOARGS, "finalize(): allocate and initialise"},
    {"set_blocks", (PyCFunction)Net_set_blocks, METH_VARARGS, "set_blocks(ends)"},
    {"default_blocks", (PyCFunction)Net_default_blocks, METH_NOARGS, "default_blocks() -> block ends"},
    {"set_block_ranges", (PyCFunction)Net_set_block_ranges, METH_VARARGS, "set_block_ranges(firsts, lasts)"},
    {"blocks", (PyCFunction)Net_blocks, METH_NOARGS, "blocks() -> [(first, last), ...]"},
    {"set_config", (PyCFunction)(void (*)(void))Net_set_config, METH_VARARGS | METH_KEYWORDS, "set_config(**cfg)"},
    {"get_config", (PyCFunction)Net_get_config, METH_NOARGS, "get_config() -> dict"},
    {"set_opt", (PyCFunction)(void (*)(void))Net_set_opt, METH_VARARGS | METH_KEYWORDS, "set_opt(layer, kind, ...)"},
    {"get_opt", (PyCFunction)Net_get_opt, METH_VARARGS, "get_opt(layer) -> dict"},
    {"get_step", (PyCFunction)Net_get_step, METH_VARARGS, "get_step(layer) -> int"},
    {"set_step", (PyCFunction)Net_set_step, METH_VARARGS, "set_step(layer, t)"},
    {"get_rng", (PyCFunction)Net_get_rng, METH_NOARGS, "get_rng() -> 4-tuple"},
    {"set_rng", (PyCFunction)Net_set_rng, METH_VARARGS, "set_rng(state)"},
    {"set_training", (PyCFunction)Net_set_training, METH_VARARGS, "set_training(flag)"},
    {"param", (PyCFunction)Net_param, METH_VARARGS, "param(layer, kind) -> ndarray view or None"},
    {"train_step", (PyCFunction)(void (*)(void))Net_train_step, METH_VARARGS | METH_KEYWORDS,
     "train_step(x, labels, neg_labels=None, active=None, train_head=False, apply_update=True) -> losses"},
    {"progress", (PyCFunction)Net_progress, METH_NOARGS,
     "progress() -> leading layers whose gradients are final in the running step (unguarded)"},
    {"train_out_size", (PyCFunction)Net_train_out_size, METH_VARARGS,
     "train_out_size(active=None) -> values per row of train_step's `out`"},
    {"optimizer_step", (PyCFunction)(void (*)(void))Net_optimizer_step, METH_VARARGS | METH_KEYWORDS,
     "optimizer_step(active=None, head=False)"},
    {"zero_grad", (PyCFunction)Net_zero_grad, METH_NOARGS, "zero_grad()"},
    {"goodness", (PyCFunction)Net_goodness, METH_VARARGS, "goodness(x) -> (B, K, nblocks)"},
    {"goodness_labeled", (PyCFunction)Net_goodness_labeled, METH_VARARGS, "goodness_labeled(x, labels=None) -> (B, nblocks)"},
    {"features", (PyCFunction)Net_features, METH_VARARGS, "features(x) -> (B, F)"},
    {"head_predict", (PyCFunction)Net_head_predict, METH_VARARGS, "head_predict(x) -> (B, K) probabilities"},
    {"info", (PyCFunction)Net_info, METH_NOARGS, "info() -> dict"},
    {"layer_info", (PyCFunction)Net_layer_info, METH_VARARGS, "layer_info(i) -> dict"},
    {"layer_shape", (PyCFunction)Net_layer_shape, METH_VARARGS, "layer_shape(i) -> (C, H, W)"},
    {"reserve", (PyCFunction)Net_reserve, METH_VARARGS, "reserve(rows)"},
    {"pipeline_begin", (PyCFunction)(void (*)(void))Net_pipeline_begin, METH_VARARGS | METH_KEYWORDS,
     "pipeline_begin(max_batch, active=None, train_head=False)"},
    {"pipeline_step", (PyCFunction)(void (*)(void))Net_pipeline_step, METH_VARARGS | METH_KEYWORDS,
     "pipeline_step(x=None, labels=None, neg_labels=None) -> per-block losses of the tick (NaN: idle)"},
    {"set_share_labels", (PyCFunction)Net_set_share_labels, METH_VARARGS,
     "set_share_labels(flag): compute a one-hot net's first layer once per sample (default on)"},
    {"pipeline_in_flight", (PyCFunction)Net_pipeline_in_flight, METH_NOARGS, "pipeline_in_flight() -> int"},
    {"pipeline_end", (PyCFunction)Net_pipeline_end, METH_NOARGS, "pipeline_end()"},
    {"set_block_loss", (PyCFunction)(void (*)(void))Net_set_block_loss, METH_VARARGS | METH_KEYWORDS,
     "set_block_loss(block, loss, goodness, theta, alpha, pvn_weight): block b's own loss"},
    {"check_grad", (PyCFunction)(void (*)(void))Net_check_grad, METH_VARARGS | METH_KEYWORDS,
     "check_grad(x, labels, neg_labels=None, block=0, eps=1e-3, seed=0) -> (fd, analytic, rel)"},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fflib._core.Net",
    .tp_basicsize = sizeof(NetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Net(input_shape, num_classes, seed=0): a compiled FF network (the C ff_net).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Net_init,
    .tp_dealloc = (destructor)Net_dealloc,
    .tp_methods = Net_methods,
};

/* ------------------------------------------------------------------ kernel wrappers (for tests and power users) */

static npy_intp dim(PyArrayObject *a, int i) { return PyArray_DIM(a, i); }

/* out (B,O) = inp (B,I) W^T + b */
static PyObject *k_linear_forward(PyObject *m, PyObject *args) {
    PyObject *oo, *io, *wo, *bo;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOO", &oo, &io, &wo, &bo)) return NULL;
    npy_intp any2[2] = {-1, -1};
    PyArrayObject *inp = check_array(io, "inp", NPY_FLOAT32, 2, any2, 0), *w;
    if (!inp) return NULL;
    npy_intp sw[2] = {-1, dim(inp, 1)};
    if (!(w = check_array(wo, "weight", NPY_FLOAT32, 2, sw, 0))) return NULL;
    npy_intp so[2] = {dim(inp, 0), dim(w, 0)}, sb[1] = {dim(w, 0)};
    PyArrayObject *out = check_array(oo, "out", NPY_FLOAT32, 2, so, 1);
    void *b;
    if (!out || opt_array(bo, "bias", NPY_FLOAT32, 1, sb, 0, &b) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_linear_forward(F32(out), F32(inp), F32(w), (float *)b, (int)so[0], (int)sw[1], (int)so[1]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_linear_backward(PyObject *m, PyObject *args) {
    PyObject *dio, *dwo, *dbo, *doo, *io, *wo;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOOO", &dio, &dwo, &dbo, &doo, &io, &wo)) return NULL;
    npy_intp any2[2] = {-1, -1};
    PyArrayObject *inp = check_array(io, "inp", NPY_FLOAT32, 2, any2, 0), *w, *dout;
    if (!inp) return NULL;
    npy_intp sw[2] = {-1, dim(inp, 1)};
    if (!(w = check_array(wo, "weight", NPY_FLOAT32, 2, sw, 0))) return NULL;
    npy_intp so[2] = {dim(inp, 0), dim(w, 0)}, sb[1] = {dim(w, 0)}, si[2] = {dim(inp, 0), dim(inp, 1)};
    npy_intp swf[2] = {dim(w, 0), dim(w, 1)};
    if (!(dout = check_array(doo, "dout", NPY_FLOAT32, 2, so, 0))) return NULL;
    void *di, *dw, *db;
    if (opt_array(dio, "dinp", NPY_FLOAT32, 2, si, 1, &di) < 0 ||
        opt_array(dwo, "dweight", NPY_FLOAT32, 2, swf, 1, &dw) < 0 ||
        opt_array(dbo, "dbias", NPY_FLOAT32, 1, sb, 1, &db) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_linear_backward(di, dw, db, F32(dout), F32(inp), F32(w), (int)si[0], (int)si[1], (int)so[1]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Two same-shape float arrays, the first an output. */
static int pair(PyObject *oo, const char *on, PyObject *io, const char *in, PyArrayObject **out,
                PyArrayObject **inp) {
    if (!PyArray_Check(io)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32", in);
        return -1;
    }
    int nd = PyArray_NDIM((PyArrayObject *)io);
    npy_intp shp[32] = {0};
    if (nd > 32) { PyErr_Format(PyExc_ValueError, "%s has too many dimensions", in); return -1; }
    for (int i = 0; i < nd; i++) shp[i] = -1;
    if (!(*inp = check_array(io, in, NPY_FLOAT32, nd, shp, 0))) return -1;
    for (int i = 0; i < nd; i++) shp[i] = dim(*inp, i);
    if (!(*out = check_array(oo, on, NPY_FLOAT32, nd, shp, 1))) return -1;
    return 0;
}

static PyObject *k_relu_forward(PyObject *m, PyObject *args) {
    PyObject *oo, *io; PyArrayObject *out, *inp;
    (void)m;
    if (!PyArg_ParseTuple(args, "OO", &oo, &io) || pair(oo, "out", io, "inp", &out, &inp) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_relu_forward(F32(out), F32(inp), (size_t)PyArray_SIZE(inp));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_relu_backward(PyObject *m, PyObject *args) {
    PyObject *dio, *doo, *oo; PyArrayObject *dinp, *dout, *out, *tmp;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOO", &dio, &doo, &oo) || pair(dio, "dinp", doo, "dout", &dinp, &dout) < 0 ||
        pair(dio, "dinp", oo, "out", &tmp, &out) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_relu_backward(F32(dinp), F32(dout), F32(out), (size_t)PyArray_SIZE(out));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_lennorm_forward(PyObject *m, PyObject *args) {
    PyObject *oo, *so, *io; int kind; float eps; PyArrayObject *out, *inp, *scale;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOif", &oo, &so, &io, &kind, &eps) ||
        pair(oo, "out", io, "inp", &out, &inp) < 0) return NULL;
    if (PyArray_NDIM(inp) != 2) return PyErr_Format(PyExc_ValueError, "inp must be 2-D (B, D)");
    npy_intp sb[1] = {dim(inp, 0)};
    if (!(scale = check_array(so, "scale", NPY_FLOAT32, 1, sb, 1))) return NULL;
    if (kind < 0 || kind > 2) return PyErr_Format(PyExc_ValueError, "kind must be 0 (none), 1 (l2) or 2 (rms)");
    Py_BEGIN_ALLOW_THREADS
    ff_lennorm_forward(F32(out), F32(scale), F32(inp), (int)sb[0], (int)dim(inp, 1), (ff_norm_kind)kind, eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_lennorm_backward(PyObject *m, PyObject *args) {
    PyObject *dio, *doo, *io, *so; int kind; float eps; PyArrayObject *dinp, *dout, *inp, *tmp, *scale;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOif", &dio, &doo, &io, &so, &kind, &eps) ||
        pair(dio, "dinp", doo, "dout", &dinp, &dout) < 0 || pair(dio, "dinp", io, "inp", &tmp, &inp) < 0)
        return NULL;
    if (PyArray_NDIM(inp) != 2) return PyErr_Format(PyExc_ValueError, "inp must be 2-D (B, D)");
    npy_intp sb[1] = {dim(inp, 0)};
    if (!(scale = check_array(so, "scale", NPY_FLOAT32, 1, sb, 0))) return NULL;
    if (kind < 0 || kind > 2) return PyErr_Format(PyExc_ValueError, "kind must be 0 (none), 1 (l2) or 2 (rms)");
    Py_BEGIN_ALLOW_THREADS
    ff_lennorm_backward(F32(dinp), F32(dout), F32(inp), F32(scale), (int)sb[0], (int)dim(inp, 1),
                        (ff_norm_kind)kind, eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_goodness_forward(PyObject *m, PyObject *args) {
    PyObject *go, *ao; int kind; PyArrayObject *g, *act;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOi", &go, &ao, &kind)) return NULL;
    npy_intp any2[2] = {-1, -1};
    if (!(act = check_array(ao, "act", NPY_FLOAT32, 2, any2, 0))) return NULL;
    npy_intp sb[1] = {dim(act, 0)};
    if (!(g = check_array(go, "g", NPY_FLOAT32, 1, sb, 1))) return NULL;
    if (kind < 0 || kind >= FF_NUM_GOODNESS)
        return PyErr_Format(PyExc_ValueError, "kind must be 0 (sum), 1 (mean), 2 (neg-sum) or 3 (neg-mean)");
    Py_BEGIN_ALLOW_THREADS
    ff_goodness_forward(F32(g), F32(act), (int)sb[0], (int)dim(act, 1), (ff_goodness_kind)kind);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_goodness_backward(PyObject *m, PyObject *args) {
    PyObject *dao, *dgo, *ao; int kind; PyArrayObject *dact, *dg, *act;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOi", &dao, &dgo, &ao, &kind) || pair(dao, "dact", ao, "act", &dact, &act) < 0)
        return NULL;
    if (PyArray_NDIM(act) != 2) return PyErr_Format(PyExc_ValueError, "act must be 2-D (B, D)");
    npy_intp sb[1] = {dim(act, 0)};
    if (!(dg = check_array(dgo, "dg", NPY_FLOAT32, 1, sb, 0))) return NULL;
    if (kind < 0 || kind >= FF_NUM_GOODNESS)
        return PyErr_Format(PyExc_ValueError, "kind must be 0 (sum), 1 (mean), 2 (neg-sum) or 3 (neg-mean)");
    Py_BEGIN_ALLOW_THREADS
    ff_goodness_backward(F32(dact), F32(dg), F32(act), (int)sb[0], (int)dim(act, 1), (ff_goodness_kind)kind);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* act (B, C, H, W) with C = J*S; G (B, J) */
static PyObject *k_group_goodness_forward(PyObject *m, PyObject *args) {
    PyObject *Go, *ao; int J; PyArrayObject *G, *act;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOi", &Go, &ao, &J)) return NULL;
    npy_intp any4[4] = {-1, -1, -1, -1};
    if (!(act = check_array(ao, "act", NPY_FLOAT32, 4, any4, 0))) return NULL;
    if (J <= 0 || dim(act, 1) % J)
        return PyErr_Format(PyExc_ValueError, "groups J=%d must divide the %ld channels of act", J, (long)dim(act, 1));
    npy_intp sg[2] = {dim(act, 0), J};
    if (!(G = check_array(Go, "G", NPY_FLOAT32, 2, sg, 1))) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_group_goodness_forward(F32(G), F32(act), (int)sg[0], J, (int)(dim(act, 1) / J), (int)(dim(act, 2) * dim(act, 3)));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_group_goodness_backward(PyObject *m, PyObject *args) {
    PyObject *dao, *dGo, *ao; int J; PyArrayObject *dact, *dG, *act;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOi", &dao, &dGo, &ao, &J) || pair(dao, "dact", ao, "act", &dact, &act) < 0)
        return NULL;
    if (PyArray_NDIM(act) != 4) return PyErr_Format(PyExc_ValueError, "act must be 4-D (B, C, H, W)");
    if (J <= 0 || dim(act, 1) % J)
        return PyErr_Format(PyExc_ValueError, "groups J=%d must divide the %ld channels of act", J, (long)dim(act, 1));
    npy_intp sg[2] = {dim(act, 0), J};
    if (!(dG = check_array(dGo, "dG", NPY_FLOAT32, 2, sg, 0))) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_group_goodness_backward(F32(dact), F32(dG), F32(act), (int)sg[0], J, (int)(dim(act, 1) / J),
                               (int)(dim(act, 2) * dim(act, 3)));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ff_loss / symba_loss(dgpos, dgneg, gpos, gneg, theta or alpha) -> float */
static PyObject *pair_loss(PyObject *args, int kind) {
    PyObject *dpo, *dno, *po, *no; float t; PyArrayObject *gp, *gn;
    if (!PyArg_ParseTuple(args, "OOOOf", &dpo, &dno, &po, &no, &t)) return NULL;
    npy_intp any1[1] = {-1};
    if (!(gp = check_array(po, "gpos", NPY_FLOAT32, 1, any1, 0))) return NULL;
    npy_intp sb[1] = {dim(gp, 0)};
    if (!(gn = check_array(no, "gneg", NPY_FLOAT32, 1, sb, 0))) return NULL;
    if (sb[0] == 0) return PyErr_Format(PyExc_ValueError, "gpos is empty");
    if (kind == FF_LOSS_SYMBA && !(t > 0.0f))
        return PyErr_Format(PyExc_ValueError, "alpha must be > 0, got %g", (double)t);
    void *dp, *dn;
    if (opt_array(dpo, "dgpos", NPY_FLOAT32, 1, sb, 1, &dp) < 0 ||
        opt_array(dno, "dgneg", NPY_FLOAT32, 1, sb, 1, &dn) < 0) return NULL;
    float L;
    Py_BEGIN_ALLOW_THREADS
    L = kind == FF_LOSS_SYMBA ? ff_symba_loss(dp, dn, F32(gp), F32(gn), (int)sb[0], t)
                              : ff_ff_loss(dp, dn, F32(gp), F32(gn), (int)sb[0], t);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(L);
}
static PyObject *k_ff_loss(PyObject *m, PyObject *args) { (void)m; return pair_loss(args, FF_LOSS_FF); }
static PyObject *k_symba_loss(PyObject *m, PyObject *args) { (void)m; return pair_loss(args, FF_LOSS_SYMBA); }
/* df_loss(dgpos, dgneg, gpos, gneg, margin) -> float; gpos (B), gneg (N,B) */
static PyObject *k_df_loss(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *dpo, *dno, *po, *no; float t; PyArrayObject *gp, *gn;
    if (!PyArg_ParseTuple(args, "OOOOf", &dpo, &dno, &po, &no, &t)) return NULL;
    npy_intp any1[1] = {-1};
    if (!(gp = check_array(po, "gpos", NPY_FLOAT32, 1, any1, 0))) return NULL;
    npy_intp nb[2] = {-1, dim(gp, 0)};
    if (!(gn = check_array(no, "gneg", NPY_FLOAT32, 2, nb, 0))) return NULL;
    nb[0] = dim(gn, 0);
    if (nb[1] == 0 || nb[0] == 0) return PyErr_Format(PyExc_ValueError, "gpos and gneg must be non-empty");
    if (nb[1] > INT_MAX || nb[0] > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "gneg of shape (%zd, %zd) is too large", (Py_ssize_t)nb[0],
                            (Py_ssize_t)nb[1]);
    if (!(t >= 0.0f && isfinite(t)))
        return PyErr_Format(PyExc_ValueError, "margin must be finite and >= 0, got %g", (double)t);
    void *dp, *dn;
    if (opt_array(dpo, "dgpos", NPY_FLOAT32, 1, nb + 1, 1, &dp) < 0 ||
        opt_array(dno, "dgneg", NPY_FLOAT32, 2, nb, 1, &dn) < 0) return NULL;
    float L;
    Py_BEGIN_ALLOW_THREADS
    L = ff_df_loss(dp, dn, F32(gp), F32(gn), (int)nb[1], (int)nb[0], t);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(L);
}

static PyObject *k_softmax_xent(PyObject *m, PyObject *args) {
    PyObject *dlo, *po, *lo, *yo; PyArrayObject *logits, *y;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOO", &dlo, &po, &lo, &yo)) return NULL;
    npy_intp any2[2] = {-1, -1};
    if (!(logits = check_array(lo, "logits", NPY_FLOAT32, 2, any2, 0))) return NULL;
    npy_intp sb[1] = {dim(logits, 0)}, s2[2] = {dim(logits, 0), dim(logits, 1)};
    if (sb[0] == 0) return PyErr_Format(PyExc_ValueError, "logits is empty");
    if (!(y = check_array(yo, "labels", NPY_INT64, 1, sb, 0)) ||
        check_labels(y, "labels", (int)dim(logits, 1)) < 0) return NULL;
    void *dl, *p;
    if (opt_array(dlo, "dlogits", NPY_FLOAT32, 2, s2, 1, &dl) < 0 ||
        opt_array(po, "probs", NPY_FLOAT32, 2, s2, 1, &p) < 0) return NULL;
    float L;
    Py_BEGIN_ALLOW_THREADS
    L = ff_softmax_xent(dl, p, F32(logits), I64(y), (int)sb[0], (int)s2[1]);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(L);
}

static PyObject *adam_like(PyObject *args, int decoupled) {
    PyObject *po, *mo, *vo, *go; float lr, b1, b2, eps, wd; long t;
    PyArrayObject *p, *mm, *v, *g, *tmp;
    if (!PyArg_ParseTuple(args, "OOOOfffffl", &po, &mo, &vo, &go, &lr, &b1, &b2, &eps, &wd, &t) ||
        pair(po, "p", go, "g", &p, &g) < 0 || pair(mo, "m", go, "g", &mm, &tmp) < 0 ||
        pair(vo, "v", go, "g", &v, &tmp) < 0) return NULL;
    if (t < 1) return PyErr_Format(PyExc_ValueError, "t must be >= 1, got %ld", t);
    Py_BEGIN_ALLOW_THREADS
    (decoupled ? ff_adamw_step : ff_adam_step)(F32(p), F32(mm), F32(v), F32(g), (size_t)PyArray_SIZE(g), lr, b1,
                                               b2, eps, wd, t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_adam_step(PyObject *m, PyObject *args) { (void)m; return adam_like(args, 0); }
static PyObject *k_adamw_step(PyObject *m, PyObject *args) { (void)m; return adam_like(args, 1); }

static PyObject *k_sgd_step(PyObject *m, PyObject *args) {
    PyObject *po, *bo, *go; float lr, mom, damp, wd; int nest; long t;
    PyArrayObject *p, *buf, *g, *tmp;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOffffpl", &po, &bo, &go, &lr, &mom, &damp, &wd, &nest, &t) ||
        pair(po, "p", go, "g", &p, &g) < 0 || pair(bo, "buf", go, "g", &buf, &tmp) < 0) return NULL;
    if (t < 1) return PyErr_Format(PyExc_ValueError, "t must be >= 1, got %ld", t);
    Py_BEGIN_ALLOW_THREADS
    ff_sgd_step(F32(p), F32(buf), F32(g), (size_t)PyArray_SIZE(g), lr, mom, damp, wd, nest, t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* conv2d_forward(out, inp, weight, bias, stride, pad, groups) */
static int conv_args(PyObject *io, PyObject *wo, int stride, int pad, int groups, PyArrayObject **inp,
                     PyArrayObject **w, npy_intp so[4]) {
    npy_intp any4[4] = {-1, -1, -1, -1};
    if (!(*inp = check_array(io, "inp", NPY_FLOAT32, 4, any4, 0))) return -1;
    if (!(*w = check_array(wo, "weight", NPY_FLOAT32, 4, any4, 0))) return -1;
    npy_intp C = dim(*inp, 1), OC = dim(*w, 0), KH = dim(*w, 2), KW = dim(*w, 3);
    if (stride < 1) { PyErr_Format(PyExc_ValueError, "stride must be >= 1, got %d", stride); return -1; }
    if (pad < 0) { PyErr_Format(PyExc_ValueError, "padding must be >= 0, got %d", pad); return -1; }
    if (groups < 1 || C % groups || OC % groups) {
        PyErr_Format(PyExc_ValueError, "groups=%d must divide in_channels=%ld and out_channels=%ld",
                     groups, (long)C, (long)OC);
        return -1;
    }
    if (dim(*w, 1) != C / groups) {
        PyErr_Format(PyExc_ValueError, "weight must have shape (OC, C/groups=%ld, KH, KW), got %ld input "
                     "channels per group (wrong channel count for inp with %ld channels?)",
                     (long)(C / groups), (long)dim(*w, 1), (long)C);
        return -1;
    }
    if (dim(*inp, 2) + 2 * pad < KH || dim(*inp, 3) + 2 * pad < KW) {
        PyErr_Format(PyExc_ValueError, "kernel %ldx%ld is larger than the padded input %ldx%ld", (long)KH,
                     (long)KW, (long)(dim(*inp, 2) + 2 * pad), (long)(dim(*inp, 3) + 2 * pad));
        return -1;
    }
    so[0] = dim(*inp, 0); so[1] = OC;
    so[2] = (dim(*inp, 2) + 2 * pad - KH) / stride + 1;
    so[3] = (dim(*inp, 3) + 2 * pad - KW) / stride + 1;
    return 0;
}

static PyObject *k_conv2d_forward(PyObject *m, PyObject *args) {
    PyObject *oo, *io, *wo, *bo; int stride, pad, groups;
    PyArrayObject *inp, *w, *out; npy_intp so[4];
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOiii", &oo, &io, &wo, &bo, &stride, &pad, &groups) ||
        conv_args(io, wo, stride, pad, groups, &inp, &w, so) < 0) return NULL;
    if (!(out = check_array(oo, "out", NPY_FLOAT32, 4, so, 1))) return NULL;
    npy_intp sb[1] = {so[1]};
    void *b;
    if (opt_array(bo, "bias", NPY_FLOAT32, 1, sb, 0, &b) < 0) return NULL;
    int C = (int)dim(inp, 1), H = (int)dim(inp, 2), W = (int)dim(inp, 3), KH = (int)dim(w, 2), KW = (int)dim(w, 3);
    int parts = ff_get_num_threads();
    size_t wsn = ff_conv2d_workspace(C, H, W, (int)so[1], KH, KW, stride, pad, groups, parts);
    float *ws = PyMem_RawMalloc((wsn ? wsn : 1) * sizeof(float));
    if (!ws) return PyErr_NoMemory();
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_conv2d_forward(F32(out), F32(inp), F32(w), b, (int)so[0], C, H, W, (int)so[1], KH, KW,
                           stride, pad, groups, ws, parts);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ws);
    return status_or_none(st, "conv2d_forward");
}

static PyObject *k_conv2d_backward(PyObject *m, PyObject *args) {
    PyObject *dio, *dwo, *dbo, *doo, *io, *wo; int stride, pad, groups;
    PyArrayObject *inp, *w, *dout; npy_intp so[4];
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOOOiii", &dio, &dwo, &dbo, &doo, &io, &wo, &stride, &pad, &groups) ||
        conv_args(io, wo, stride, pad, groups, &inp, &w, so) < 0) return NULL;
    if (!(dout = check_array(doo, "dout", NPY_FLOAT32, 4, so, 0))) return NULL;
    npy_intp si[4] = {dim(inp, 0), dim(inp, 1), dim(inp, 2), dim(inp, 3)};
    npy_intp sw[4] = {dim(w, 0), dim(w, 1), dim(w, 2), dim(w, 3)}, sb[1] = {so[1]};
    void *di, *dw, *db;
    if (opt_array(dio, "dinp", NPY_FLOAT32, 4, si, 1, &di) < 0 ||
        opt_array(dwo, "dweight", NPY_FLOAT32, 4, sw, 1, &dw) < 0 ||
        opt_array(dbo, "dbias", NPY_FLOAT32, 1, sb, 1, &db) < 0) return NULL;
    int C = (int)si[1], H = (int)si[2], W = (int)si[3], KH = (int)sw[2], KW = (int)sw[3];
    int parts = ff_get_num_threads();
    size_t wsn = ff_conv2d_workspace(C, H, W, (int)so[1], KH, KW, stride, pad, groups, parts);
    float *ws = PyMem_RawMalloc((wsn ? wsn : 1) * sizeof(float));
    if (!ws) return PyErr_NoMemory();
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_conv2d_backward(di, dw, db, F32(dout), F32(inp), F32(w), (int)si[0], C, H, W, (int)so[1],
                            KH, KW, stride, pad, groups, ws, parts);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ws);
    return status_or_none(st, "conv2d_backward");
}

/* batchnorm2d_forward_train(out, mean, rstd, running_mean, running_var, inp, gamma, beta, eps, momentum) */
static PyObject *k_bn_forward_train(PyObject *m, PyObject *args) {
    PyObject *oo, *mo, *ro, *rmo, *rvo, *io, *go, *bo; float eps, mom;
    PyArrayObject *out, *inp, *mean, *rstd, *rm, *rv;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOOOOOff", &oo, &mo, &ro, &rmo, &rvo, &io, &go, &bo, &eps, &mom) ||
        pair(oo, "out", io, "inp", &out, &inp) < 0) return NULL;
    if (PyArray_NDIM(inp) != 4) return PyErr_Format(PyExc_ValueError, "inp must be 4-D (N, C, H, W)");
    if (!(eps > 0.0f)) return PyErr_Format(PyExc_ValueError, "eps must be > 0");
    npy_intp sc[1] = {dim(inp, 1)};
    if (!(mean = check_array(mo, "mean", NPY_FLOAT32, 1, sc, 1)) || !(rstd = check_array(ro, "rstd", NPY_FLOAT32, 1, sc, 1)) ||
        !(rm = check_array(rmo, "running_mean", NPY_FLOAT32, 1, sc, 1)) ||
        !(rv = check_array(rvo, "running_var", NPY_FLOAT32, 1, sc, 1))) return NULL;
    void *g, *b;
    if (opt_array(go, "gamma", NPY_FLOAT32, 1, sc, 0, &g) < 0 || opt_array(bo, "beta", NPY_FLOAT32, 1, sc, 0, &b) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_batchnorm2d_forward_train(F32(out), F32(mean), F32(rstd), F32(rm), F32(rv), F32(inp), g, b,
                                 (int)dim(inp, 0), (int)sc[0], (int)(dim(inp, 2) * dim(inp, 3)), eps, mom);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_bn_forward_eval(PyObject *m, PyObject *args) {
    PyObject *oo, *io, *rmo, *rvo, *go, *bo; float eps;
    PyArrayObject *out, *inp, *rm, *rv;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOOOf", &oo, &io, &rmo, &rvo, &go, &bo, &eps) ||
        pair(oo, "out", io, "inp", &out, &inp) < 0) return NULL;
    if (PyArray_NDIM(inp) != 4) return PyErr_Format(PyExc_ValueError, "inp must be 4-D (N, C, H, W)");
    npy_intp sc[1] = {dim(inp, 1)};
    if (!(rm = check_array(rmo, "running_mean", NPY_FLOAT32, 1, sc, 0)) ||
        !(rv = check_array(rvo, "running_var", NPY_FLOAT32, 1, sc, 0))) return NULL;
    void *g, *b;
    if (opt_array(go, "gamma", NPY_FLOAT32, 1, sc, 0, &g) < 0 || opt_array(bo, "beta", NPY_FLOAT32, 1, sc, 0, &b) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_batchnorm2d_forward_eval(F32(out), F32(inp), F32(rm), F32(rv), g, b, (int)dim(inp, 0), (int)sc[0],
                                (int)(dim(inp, 2) * dim(inp, 3)), eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_bn_backward(PyObject *m, PyObject *args) {
    PyObject *dio, *dgo, *dbo, *doo, *io, *mo, *ro, *go;
    PyArrayObject *dout, *inp, *mean, *rstd, *tmp;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &dio, &dgo, &dbo, &doo, &io, &mo, &ro, &go) ||
        pair(doo, "dout", io, "inp", &tmp, &inp) < 0) return NULL;
    dout = tmp;
    if (PyArray_NDIM(inp) != 4) return PyErr_Format(PyExc_ValueError, "inp must be 4-D (N, C, H, W)");
    npy_intp sc[1] = {dim(inp, 1)}, si[4] = {dim(inp, 0), dim(inp, 1), dim(inp, 2), dim(inp, 3)};
    if (!(mean = check_array(mo, "mean", NPY_FLOAT32, 1, sc, 0)) || !(rstd = check_array(ro, "rstd", NPY_FLOAT32, 1, sc, 0)))
        return NULL;
    void *di, *dg, *db, *g;
    if (opt_array(dio, "dinp", NPY_FLOAT32, 4, si, 1, &di) < 0 || opt_array(dgo, "dgamma", NPY_FLOAT32, 1, sc, 1, &dg) < 0 ||
        opt_array(dbo, "dbeta", NPY_FLOAT32, 1, sc, 1, &db) < 0 || opt_array(go, "gamma", NPY_FLOAT32, 1, sc, 0, &g) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_batchnorm2d_backward(di, dg, db, F32(dout), F32(inp), F32(mean), F32(rstd), g, (int)si[0], (int)si[1],
                            (int)(si[2] * si[3]));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_maxpool_forward(PyObject *m, PyObject *args) {
    PyObject *oo, *ao, *io; int k, s; PyArrayObject *out, *am, *inp;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOii", &oo, &ao, &io, &k, &s)) return NULL;
    npy_intp any4[4] = {-1, -1, -1, -1};
    if (!(inp = check_array(io, "inp", NPY_FLOAT32, 4, any4, 0))) return NULL;
    if (k < 1 || s < 1) return PyErr_Format(PyExc_ValueError, "kernel_size and stride must be >= 1, got %d, %d", k, s);
    if (k > dim(inp, 2) || k > dim(inp, 3))
        return PyErr_Format(PyExc_ValueError, "kernel_size %d is larger than the input %ldx%ld", k,
                            (long)dim(inp, 2), (long)dim(inp, 3));
    npy_intp so[4] = {dim(inp, 0), dim(inp, 1), (dim(inp, 2) - k) / s + 1, (dim(inp, 3) - k) / s + 1};
    if (!(out = check_array(oo, "out", NPY_FLOAT32, 4, so, 1)) || !(am = check_array(ao, "argmax", NPY_INT32, 4, so, 1)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_maxpool2d_forward(F32(out), (int32_t *)PyArray_DATA(am), F32(inp), (int)so[0], (int)so[1],
                         (int)dim(inp, 2), (int)dim(inp, 3), k, s);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_maxpool_backward(PyObject *m, PyObject *args) {
    PyObject *dio, *doo, *ao; PyArrayObject *dinp, *dout, *am;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOO", &dio, &doo, &ao)) return NULL;
    npy_intp any4[4] = {-1, -1, -1, -1};
    if (!(dout = check_array(doo, "dout", NPY_FLOAT32, 4, any4, 0))) return NULL;
    npy_intp so[4] = {dim(dout, 0), dim(dout, 1), dim(dout, 2), dim(dout, 3)};
    if (!(am = check_array(ao, "argmax", NPY_INT32, 4, so, 0))) return NULL;
    npy_intp si[4] = {so[0], so[1], -1, -1};
    if (!(dinp = check_array(dio, "dinp", NPY_FLOAT32, 4, si, 1))) return NULL;
    /* argmax values index the (H, W) plane: reject any that would write out of bounds */
    const int32_t *a = (const int32_t *)PyArray_DATA(am);
    npy_intp plane = dim(dinp, 2) * dim(dinp, 3);
    for (npy_intp i = 0; i < PyArray_SIZE(am); i++)
        if (a[i] < 0 || a[i] >= plane) return PyErr_Format(PyExc_ValueError, "argmax[%ld] = %d is outside the input plane", (long)i, a[i]);
    Py_BEGIN_ALLOW_THREADS
    ff_maxpool2d_backward(F32(dinp), F32(dout), a, (int)so[0], (int)so[1], (int)dim(dinp, 2), (int)dim(dinp, 3),
                          (int)so[2], (int)so[3]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *k_overlay_labels(PyObject *m, PyObject *args) {
    PyObject *oo, *io, *yo; int K; float v; PyArrayObject *out, *inp;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOif", &oo, &io, &yo, &K, &v) || pair(oo, "out", io, "x", &out, &inp) < 0)
        return NULL;
    if (PyArray_NDIM(inp) != 2) return PyErr_Format(PyExc_ValueError, "x must be 2-D (B, D)");
    if (K < 2 || K > dim(inp, 1)) return PyErr_Format(PyExc_ValueError, "K must be in [2, D], got %d", K);
    npy_intp sb[1] = {dim(inp, 0)};
    void *y;
    if (opt_array(yo, "labels", NPY_INT64, 1, sb, 0, &y) < 0) return NULL;
    if (y) {
        const int64_t *p = y;
        for (npy_intp i = 0; i < sb[0]; i++)
            if (p[i] < -1 || p[i] >= K)
                return PyErr_Format(PyExc_ValueError, "labels[%ld] = %lld must be in [0, %d) or -1 (neutral)",
                                    (long)i, (long long)p[i], K);
    }
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_overlay_labels(F32(out), F32(inp), y, (int)sb[0], (int)dim(inp, 1), K, v);
    Py_END_ALLOW_THREADS
    return status_or_none(st, "overlay_labels");
}

/* 1 if the buffers of a and b overlap */
static int overlap(PyArrayObject *a, PyArrayObject *b) {
    const char *pa = PyArray_DATA(a), *pb = PyArray_DATA(b);
    return pa < pb + PyArray_NBYTES(b) && pb < pa + PyArray_NBYTES(a);
}

static PyObject *k_scff_pairs(PyObject *m, PyObject *args) {
    PyObject *po, *no, *xo, *x2o; int shift; PyArrayObject *pos, *neg, *x, *x2;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOOi", &po, &no, &xo, &x2o, &shift)) return NULL;
    npy_intp any2[2] = {-1, -1};
    if (!(x = check_array(xo, "x", NPY_FLOAT32, 2, any2, 0))) return NULL;
    npy_intp s[2] = {dim(x, 0), dim(x, 1)};
    if (!(x2 = check_array(x2o, "x2", NPY_FLOAT32, 2, s, 0)) || !(pos = check_array(po, "pos", NPY_FLOAT32, 2, s, 1))
        || !(neg = check_array(no, "neg", NPY_FLOAT32, 2, s, 1))) return NULL;
    if (s[0] < 2 || s[0] > INT_MAX || s[1] > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "x must hold at least 2 samples (a negative pairs two of them), got %ld",
                            (long)s[0]);
    if (shift < 1 || shift >= s[0])
        return PyErr_Format(PyExc_ValueError, "shift must be in [1, %ld] (the batch size - 1), got %d", (long)s[0] - 1, shift);
    if (overlap(pos, neg) || overlap(pos, x) || overlap(pos, x2) || overlap(neg, x) || overlap(neg, x2))
        return PyErr_Format(PyExc_ValueError, "pos and neg must be new arrays, not views of x, x2 or each other");
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_scff_pairs(F32(pos), F32(neg), F32(x), F32(x2), (int)s[0], (int)s[1], shift);
    Py_END_ALLOW_THREADS
    return status_or_none(st, "scff_pairs");
}

static PyObject *k_hybrid_masks(PyObject *m, PyObject *args) {
    PyObject *mo, *bo; int iterations; PyArrayObject *mask, *bits;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOi", &mo, &bo, &iterations)) return NULL;
    npy_intp any3[3] = {-1, -1, -1};
    if (!(bits = check_array(bo, "bits", NPY_FLOAT32, 3, any3, 0))) return NULL;
    npy_intp s[3] = {dim(bits, 0), dim(bits, 1), dim(bits, 2)};
    if (!(mask = check_array(mo, "mask", NPY_FLOAT32, 3, s, 1))) return NULL;
    if (s[0] < 1 || s[1] < 1 || s[2] < 1 || s[0] > INT_MAX || s[1] * s[2] > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "bits must be a non-empty (B, H, W) array, got (%ld, %ld, %ld)",
                            (long)s[0], (long)s[1], (long)s[2]);
    if (iterations < 0) return PyErr_Format(PyExc_ValueError, "iterations must be >= 0, got %d", iterations);
    if (PyArray_DATA(mask) != PyArray_DATA(bits) && overlap(mask, bits))
        return PyErr_Format(PyExc_ValueError, "mask must be bits itself or a separate array");
    float *work = malloc((size_t)s[1] * s[2] * sizeof(float));
    if (!work) return PyErr_NoMemory();
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_hybrid_masks(F32(mask), work, F32(bits), (int)s[0], (int)s[1], (int)s[2], iterations);
    Py_END_ALLOW_THREADS
    free(work);
    return status_or_none(st, "hybrid_masks");
}

static PyObject *k_hybrid_images(PyObject *m, PyObject *args) {
    PyObject *oo, *xo, *mo; int shift; PyArrayObject *out, *x, *mask;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOOi", &oo, &xo, &mo, &shift)) return NULL;
    npy_intp any4[4] = {-1, -1, -1, -1};
    if (!(x = check_array(xo, "x", NPY_FLOAT32, 4, any4, 0))) return NULL;
    npy_intp s[4] = {dim(x, 0), dim(x, 1), dim(x, 2), dim(x, 3)}, sm[3] = {s[0], s[2], s[3]};
    if (!(out = check_array(oo, "out", NPY_FLOAT32, 4, s, 1)) || !(mask = check_array(mo, "mask", NPY_FLOAT32, 3, sm, 0)))
        return NULL;
    if (s[0] < 2 || s[0] > INT_MAX || s[1] < 1 || s[1] * s[2] * s[3] > INT_MAX || s[2] * s[3] < 1)
        return PyErr_Format(PyExc_ValueError, "x must be (B, C, H, W) with at least 2 samples, got (%ld, %ld, %ld, %ld)",
                            (long)s[0], (long)s[1], (long)s[2], (long)s[3]);
    if (shift < 1 || shift >= s[0])
        return PyErr_Format(PyExc_ValueError, "shift must be in [1, %ld] (the batch size - 1), got %d", (long)s[0] - 1, shift);
    if (overlap(out, x) || overlap(out, mask))
        return PyErr_Format(PyExc_ValueError, "out must be a new array, not a view of x or mask");
    ff_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ff_hybrid_images(F32(out), F32(x), F32(mask), (int)s[0], (int)s[1], (int)(s[2] * s[3]), shift);
    Py_END_ALLOW_THREADS
    return status_or_none(st, "hybrid_images");
}

static PyObject *k_all_finite(PyObject *m, PyObject *args) {
    PyObject *o; PyArrayObject *a; int ok;
    (void)m;
    if (!PyArg_ParseTuple(args, "O", &o)) return NULL;
    if (!PyArray_Check(o)) return PyErr_Format(PyExc_TypeError, "x must be a numpy.ndarray of float32");
    int nd = PyArray_NDIM((PyArrayObject *)o);
    npy_intp shp[32] = {0};
    for (int i = 0; i < nd && i < 32; i++) shp[i] = -1;
    if (nd > 32 || !(a = check_array(o, "x", NPY_FLOAT32, nd, shp, 0))) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = ff_all_finite(F32(a), (size_t)PyArray_SIZE(a));
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static PyObject *m_set_num_threads(PyObject *m, PyObject *args) {
    int n;
    (void)m;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "n must be >= 1, got %d", n);
    ff_set_num_threads(n);
    Py_RETURN_NONE;
}
static PyObject *m_get_num_threads(PyObject *m, PyObject *Py_UNUSED(a)) { (void)m; return PyLong_FromLong(ff_get_num_threads()); }
static PyObject *m_blas_name(PyObject *m, PyObject *Py_UNUSED(a)) { (void)m; return PyUnicode_FromString(ff_blas_name()); }

static PyObject *m_sgemm(PyObject *m, PyObject *args) {
    /* C (M,N) = A (M,K) B (K,N): for benchmarking the BLAS the core uses */
    PyObject *co, *ao, *bo; PyArrayObject *A, *Bm, *Cm;
    (void)m;
    if (!PyArg_ParseTuple(args, "OOO", &co, &ao, &bo)) return NULL;
    npy_intp any2[2] = {-1, -1};
    if (!(A = check_array(ao, "A", NPY_FLOAT32, 2, any2, 0))) return NULL;
    npy_intp sb[2] = {dim(A, 1), -1};
    if (!(Bm = check_array(bo, "B", NPY_FLOAT32, 2, sb, 0))) return NULL;
    npy_intp sc[2] = {dim(A, 0), dim(Bm, 1)};
    if (!(Cm = check_array(co, "C", NPY_FLOAT32, 2, sc, 1))) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ff_sgemm(0, 0, (int)sc[0], (int)sc[1], (int)sb[0], 1.0f, F32(A), (int)sb[0], F32(Bm), (int)sc[1], 0.0f,
             F32(Cm), (int)sc[1]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_num_threads", m_set_num_threads, METH_VARARGS, "set_num_threads(n): BLAS threads"},
    {"get_num_threads", m_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"blas_name", m_blas_name, METH_NOARGS, "blas_name() -> str"},
    {"sgemm", m_sgemm, METH_VARARGS, "sgemm(C, A, B): C = A @ B through the core's BLAS"},
    {"linear_forward", k_linear_forward, METH_VARARGS, "linear_forward(out, inp, weight, bias)"},
    {"linear_backward", k_linear_backward, METH_VARARGS, "linear_backward(dinp, dweight, dbias, dout, inp, weight) (adds)"},
    {"relu_forward", k_relu_forward, METH_VARARGS, "relu_forward(out, inp)"},
    {"relu_backward", k_relu_backward, METH_VARARGS, "relu_backward(dinp, dout, out) (adds)"},
    {"lennorm_forward", k_lennorm_forward, METH_VARARGS, "lennorm_forward(out, scale, inp, kind, eps)"},
    {"lennorm_backward", k_lennorm_backward, METH_VARARGS, "lennorm_backward(dinp, dout, inp, scale, kind, eps) (adds)"},
    {"goodness_forward", k_goodness_forward, METH_VARARGS, "goodness_forward(g, act, kind)"},
    {"goodness_backward", k_goodness_backward, METH_VARARGS, "goodness_backward(dact, dg, act, kind) (adds)"},
    {"group_goodness_forward", k_group_goodness_forward, METH_VARARGS, "group_goodness_forward(G, act, J)"},
    {"group_goodness_backward", k_group_goodness_backward, METH_VARARGS, "group_goodness_backward(dact, dG, act, J) (adds)"},
    {"ff_loss", k_ff_loss, METH_VARARGS, "ff_loss(dgpos, dgneg, gpos, gneg, theta) -> float"},
    {"symba_loss", k_symba_loss, METH_VARARGS, "symba_loss(dgpos, dgneg, gpos, gneg, alpha) -> float"},
    {"df_loss", k_df_loss, METH_VARARGS, "df_loss(dgpos, dgneg, gpos (B), gneg (N, B), margin) -> float"},
    {"softmax_xent", k_softmax_xent, METH_VARARGS, "softmax_xent(dlogits, probs, logits, labels) -> float"},
    {"adam_step", k_adam_step, METH_VARARGS, "adam_step(p, m, v, g, lr, b1, b2, eps, wd, t)"},
    {"adamw_step", k_adamw_step, METH_VARARGS, "adamw_step(p, m, v, g, lr, b1, b2, eps, wd, t): decoupled decay"},
    {"sgd_step", k_sgd_step, METH_VARARGS, "sgd_step(p, buf, g, lr, momentum, dampening, wd, nesterov, t)"},
    {"conv2d_forward", k_conv2d_forward, METH_VARARGS, "conv2d_forward(out, inp, weight, bias, stride, pad, groups)"},
    {"conv2d_backward", k_conv2d_backward, METH_VARARGS, "conv2d_backward(dinp, dweight, dbias, dout, inp, weight, stride, pad, groups) (adds)"},
    {"batchnorm2d_forward_train", k_bn_forward_train, METH_VARARGS,
     "batchnorm2d_forward_train(out, mean, rstd, running_mean, running_var, inp, gamma, beta, eps, momentum)"},
    {"batchnorm2d_forward_eval", k_bn_forward_eval, METH_VARARGS,
     "batchnorm2d_forward_eval(out, inp, running_mean, running_var, gamma, beta, eps)"},
    {"batchnorm2d_backward", k_bn_backward, METH_VARARGS,
     "batchnorm2d_backward(dinp, dgamma, dbeta, dout, inp, mean, rstd, gamma) (adds)"},
    {"maxpool2d_forward", k_maxpool_forward, METH_VARARGS, "maxpool2d_forward(out, argmax, inp, kernel, stride)"},
    {"maxpool2d_backward", k_maxpool_backward, METH_VARARGS, "maxpool2d_backward(dinp, dout, argmax) (adds)"},
    {"overlay_labels", k_overlay_labels, METH_VARARGS, "overlay_labels(out, x, labels, K, value)"},
    {"scff_pairs", k_scff_pairs, METH_VARARGS, "scff_pairs(pos, neg, x, x2, shift): self-contrastive pairs"},
    {"hybrid_masks", k_hybrid_masks, METH_VARARGS, "hybrid_masks(mask, bits, iterations): Hinton's blurred masks"},
    {"hybrid_images", k_hybrid_images, METH_VARARGS, "hybrid_images(out, x, mask, shift): hybrid negatives"},
    {"all_finite", k_all_finite, METH_VARARGS, "all_finite(x) -> bool"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core", "fflib's compiled core (see csrc/fflib.h).", -1, module_methods,
    NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    if (PyType_Ready(&NetType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&NetType);
    if (PyModule_AddObject(m, "Net", (PyObject *)&NetType) < 0) { Py_DECREF(&NetType); Py_DECREF(m); return NULL; }
    PyModule_AddIntConstant(m, "VERSION_MAJOR", FF_VERSION_MAJOR);
    /* the core's enum tables, name -> value: the Python layer builds its choices from these */
    struct { const char *attr; const char *(*name)(int); } tables[] = {
        {"LAYER_KINDS", ff_layer_kind_name}, {"LOSSES", ff_loss_name}, {"LABEL_ENCODINGS", ff_label_name},
        {"NORMS", ff_norm_name}, {"GOODNESS", ff_goodness_name}, {"OPTIMIZERS", ff_opt_name},
        {"PARAM_KINDS", ff_param_name}};
    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
        PyObject *d = PyDict_New();
        if (!d) { Py_DECREF(m); return NULL; }
        for (int k = 0; tables[t].name(k); k++) {
            PyObject *v = PyLong_FromLong(k);
            if (!v || PyDict_SetItemString(d, tables[t].name(k), v) < 0) {
                Py_XDECREF(v); Py_DECREF(d); Py_DECREF(m); return NULL;
            }
            Py_DECREF(v);
        }
        if (PyModule_AddObject(m, tables[t].attr, d) < 0) { Py_DECREF(d); Py_DECREF(m); return NULL; }
    }
    PyModule_AddIntConstant(m, "HEAD", FF_LAYER_HEAD);
    PyModule_AddIntConstant(m, "EMBEDDING", FF_LAYER_EMBEDDING);
    PyModule_AddIntConstant(m, "DECODER", FF_LAYER_DECODER(0));   /* decoder b is DECODER - b */
    PyModule_AddIntConstant(m, "VERSION_MINOR", FF_VERSION_MINOR);
    return m;
}
