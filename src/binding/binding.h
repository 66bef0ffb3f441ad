/*
 * Shared declarations of the binding layer: the files that know Python and NumPy.
 * module.c defines BN_MODULE_MAIN before including this, so it owns the NumPy C-API
 * table; the other binding files import it through PY_ARRAY_UNIQUE_SYMBOL.
 */
#ifndef BN_BINDING_H
#define BN_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL bnorm_ARRAY_API
#ifndef BN_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "bnorm_kernels.h"

/* ---- arrays.c: argument checks with messages that say what was expected ---- */

/* Looks up the NumPy type number of each supported row of the dtype table
 * (dtypes.h) by its name; once, at import, before anything below is used. */
int bn_init_dtypes(void);

/* The kernel dtype of a NumPy type number; -1 if this build has no kernels for it. */
int bn_dtype_from_typenum(int typenum, bn_dtype *dtype);

/* The supported dtype names, for messages ("float32, float64 or float16"), and as a
 * new tuple of str (bnorm._core.DTYPES). */
const char *bn_dtype_list(void);
PyObject *bn_dtype_names(void);

/* The type of parameters, running statistics and their gradients for data of
 * type `typenum`: float32 for float16 data, else the same. */
int bn_param_typenum(int typenum);

/* `obj` as an aligned, native-byte-order array of type `typenum` whose memory is
 * C-contiguous or channels-last (a new reference; a C-contiguous copy when the
 * input is neither). `typenum` < 0 accepts
 * any supported float type. Raises TypeError for anything else. */
PyArrayObject *bn_input_array(PyObject *obj, int typenum, const char *name);

/* Whether the memory of an (N, C, *spatial) array is (N, *spatial, C) in C order
 * (PyTorch's channels_last), and not also plain C-contiguous. */
int bn_is_channels_last(PyArrayObject *a);

/* `obj` (dy) checked against `like` (x): same type and shape, and in the memory
 * layout of `like` (copied into it if needed). */
PyArrayObject *bn_input_like(PyObject *obj, PyArrayObject *like, const char *name);

/* Checks ndim is in [min_ndim, max_ndim] (max_ndim < 0: no upper bound) and the
 * channel axis has `channels` entries (channels < 0: any). Raises ValueError. */
int bn_check_layout(PyArrayObject *x, int min_ndim, int max_ndim, npy_intp channels);

/* Rejects training-mode statistics over fewer than two values, as PyTorch does. */
int bn_check_batch_size(PyArrayObject *x);

/* (N, C, S) of a checked input. */
bn_dims bn_dims_of(PyArrayObject *x);

/* `out` (None: a new array) as the output for an input shaped like `like`: a new
 * reference to a writeable, aligned array of the same shape, type and memory layout
 * (C-contiguous or channels-last). */
PyArrayObject *bn_output_array(PyObject *out, PyArrayObject *like, const char *name);

/* How the memory of two C-contiguous arrays relates. */
typedef enum { BN_DISJOINT, BN_SAME_MEMORY, BN_PARTIAL_OVERLAP } bn_memory_relation;
bn_memory_relation bn_relate_memory(PyArrayObject *a, PyArrayObject *b);

/* A per-channel parameter: None gives NULL (no error); otherwise an ndarray of
 * shape (channels,) and type `typenum`, contiguous (a copy may be made). With
 * `in_place` it must also be writeable, since it is updated where it is: a copy
 * then carries NPY_ARRAY_WRITEBACKIFCOPY, so the caller must call
 * PyArray_ResolveWritebackIfCopy (or Discard) on it before releasing it. */
int bn_param_array(PyObject *obj, int typenum, npy_intp channels, const char *name, int in_place,
                   PyArrayObject **result);
/* Releases a running statistic from bn_param_array(in_place), copying a contiguous
 * stand-in for a strided array back into it when the call succeeded. */
void bn_release_running(PyArrayObject *arr, int succeeded);

/* ---- policy.c: which statistics a forward uses and what it does to the running ones ---- */

/* Whether a forward normalises with the batch's statistics: when training, or when
 * there are no running statistics to use (PyTorch's rule). */
int bn_uses_batch_stats(int training, int has_running_stats);

/* A forward call of the module type or the functional layer. */
typedef struct {
    bn_dtype dtype;
    bn_dims dims;
    const void *x;
    void *y;
    const void *gamma, *beta; /* NULL: 1 and 0 */
    double eps;
    int relu, training;
    /* the running statistics (parameter dtype), both NULL when none are kept; read
     * in eval mode, updated in training mode */
    void *running_mean, *running_var;
    /* weight of the new batch; NAN (momentum=None): the cumulative average over
     * *num_batches_tracked, which then must not be NULL */
    double momentum;
    long long *num_batches_tracked; /* counted up by each training forward; NULL: not kept */
    double *mean, *var, *invstd;    /* out: the statistics used (var: the batch's) */
} bn_forward_call;

/* Runs the forward with the statistics bn_uses_batch_stats chooses, and in training
 * mode updates the running statistics (an empty batch is counted but leaves them, as
 * in PyTorch). Plain C: call it with the GIL released. */
bn_status bn_run_forward(const bn_forward_call *call);

/* ---- batchnorm_type.c ---- */
extern PyType_Spec bn_batchnorm_spec;
/* Gives the type's __call__ forward's text signature, keeping tp_call as it is (0, or -1 with an exception). */
int bn_give_call_a_signature(PyTypeObject *type);
/* Registers the fork handler by which a forked child replaces module locks copied while held. */
void bn_batchnorm_init_fork(void);

/* ---- functional.c ---- */
extern PyMethodDef bn_functional_methods[];

/* ---- phases.c: the split phases of the functional layer ---- */
extern PyMethodDef bn_phase_methods[];

/* Runs `call` with the GIL released; a kernel status becomes a Python exception. */
#define BN_WITHOUT_GIL(status, call) \
    do {                             \
        Py_BEGIN_ALLOW_THREADS       \
        (status) = (call);           \
        Py_END_ALLOW_THREADS         \
    } while (0)

int bn_raise_status(bn_status status);

/* PyArg "O&" converters shared by the module type and the functional layer, so the
 * two accept the same values with the same messages: eps a positive finite float
 * (double *), momentum any finite float or None (double *, None -> NAN). */
int bn_eps_converter(PyObject *obj, void *eps);
int bn_momentum_converter(PyObject *obj, void *momentum);

/* PyArg "O&" converter of an activation name: None -> 0, "relu" -> 1. */
int bn_activation_converter(PyObject *obj, void *relu);

#endif
