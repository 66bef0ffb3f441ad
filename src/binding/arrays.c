/* Conversions and checks of NumPy arguments, shared by the module type and the
 * functional layer, so that both word their errors the same way. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "binding.h"

static PyObject *shape_tuple(PyArrayObject *x)
{
    return PyArray_IntTupleFromIntp(PyArray_NDIM(x), PyArray_SHAPE(x));
}

/* NumPy's type number of each row of the dtype table (dtypes.h), looked up by the
 * row's name at import (bn_init_dtypes); -1 for a row this build has no loops for. */
static int typenums[BN_DTYPE_COUNT];
/* The supported names for messages: "float32, float64 or float16". */
static char dtype_list[BN_DTYPE_COUNT * 16];

int bn_init_dtypes(void)
{
    int listed = 0, supported = 0;
    for (int d = 0; d < BN_DTYPE_COUNT; d++)
        supported += bn_dtype_supported((bn_dtype)d);
    dtype_list[0] = '\0';
    for (int d = 0; d < BN_DTYPE_COUNT; d++) {
        typenums[d] = -1;
        if (!bn_dtype_supported((bn_dtype)d))
            continue;
        PyArray_Descr *descr = NULL;
        PyObject *name = PyUnicode_FromString(bn_dtype_name((bn_dtype)d));
        const int found = name != NULL && PyArray_DescrConverter(name, &descr);
        Py_XDECREF(name);
        if (!found)
            return -1;
        typenums[d] = descr->type_num;
        Py_DECREF(descr);
        const char *separator = listed == 0 ? "" : listed == supported - 1 ? " or " : ", ";
        const size_t used = strlen(dtype_list);
        snprintf(dtype_list + used, sizeof dtype_list - used, "%s%s", separator, bn_dtype_name((bn_dtype)d));
        listed++;
    }
    return 0;
}

const char *bn_dtype_list(void) { return dtype_list; }

PyObject *bn_dtype_names(void)
{
    PyObject *names = PyList_New(0);
    for (int d = 0; names != NULL && d < BN_DTYPE_COUNT; d++) {
        PyObject *name = typenums[d] < 0 ? NULL : PyUnicode_FromString(bn_dtype_name((bn_dtype)d));
        if (typenums[d] >= 0 && (name == NULL || PyList_Append(names, name) < 0))
            Py_CLEAR(names);
        Py_XDECREF(name);
    }
    PyObject *tuple = names == NULL ? NULL : PyList_AsTuple(names);
    Py_XDECREF(names);
    return tuple;
}

int bn_dtype_from_typenum(int typenum, bn_dtype *dtype)
{
    for (int d = 0; d < BN_DTYPE_COUNT; d++)
        if (typenums[d] >= 0 && typenums[d] == typenum) {
            *dtype = (bn_dtype)d;
            return 0;
        }
    return -1;
}

/* The name of a supported type number (callers have checked it is one). */
static const char *typenum_name(int typenum)
{
    bn_dtype dtype;
    return bn_dtype_from_typenum(typenum, &dtype) == 0 ? bn_dtype_name(dtype) : "unsupported dtype";
}

int bn_param_typenum(int typenum)
{
    bn_dtype dtype;
    return bn_dtype_from_typenum(typenum, &dtype) == 0 ? typenums[bn_param_dtype(dtype)] : typenum;
}

/* Duck-typed so that torch is never imported: a tensor has detach() and numpy(). */
static int is_torch_tensor(PyObject *obj)
{
    return PyObject_HasAttrString(obj, "detach") && PyObject_HasAttrString(obj, "numpy");
}

PyArrayObject *bn_input_array(PyObject *obj, int typenum, const char *name)
{
    if (!PyArray_Check(obj)) {
        if (is_torch_tensor(obj))
            PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got a torch.Tensor; pass %s.numpy() "
                         "(x.detach().cpu().numpy() for a tensor that needs grad or lives on a GPU)", name, name);
        else
            PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    PyArray_Descr *descr = PyArray_DESCR(arr);
    int actual = descr->type_num;
    bn_dtype unused;
    if (bn_dtype_from_typenum(actual, &unused) < 0) {
        if (typenum < 0)
            PyErr_Format(PyExc_TypeError, "%s: expected a %s array, got dtype %S", name, bn_dtype_list(),
                         (PyObject *)descr);
        else
            PyErr_Format(PyExc_TypeError,
                         "%s: expected a %s array, got dtype %S; convert with %s.astype(np.%s)", name,
                         typenum_name(typenum), (PyObject *)descr, name, typenum_name(typenum));
        return NULL;
    }
    if (typenum >= 0 && actual != typenum) {
        PyErr_Format(PyExc_TypeError,
                     "%s: expected %s input, got %s; convert with %s.astype(np.%s)",
                     name, typenum_name(typenum), typenum_name(actual), name, typenum_name(typenum));
        return NULL;
    }
    if (PyArray_ISALIGNED(arr) && PyArray_ISNOTSWAPPED(arr) && bn_is_channels_last(arr))
        return (PyArrayObject *)Py_NewRef(obj);
    /* FromArray makes a copy only for a strided, unaligned or byte-swapped input. */
    PyArray_Descr *native = PyArray_DescrFromType(actual);
    return (PyArrayObject *)PyArray_FromArray(arr, native, NPY_ARRAY_IN_ARRAY);
}

int bn_is_channels_last(PyArrayObject *a)
{
    const int ndim = PyArray_NDIM(a);
    if (ndim < 3 || PyArray_IS_C_CONTIGUOUS(a))
        return 0;
    /* axis 1 varies fastest, then the spatial axes from the last, then axis 0;
     * axes of length 1 may have any stride, as in NumPy's own contiguity test */
    npy_intp expected = PyArray_ITEMSIZE(a);
    const npy_intp *shape = PyArray_SHAPE(a), *strides = PyArray_STRIDES(a);
    int order[NPY_MAXDIMS];
    order[0] = 1;
    for (int k = 1; k < ndim - 1; k++)
        order[k] = ndim - k;
    order[ndim - 1] = 0;
    for (int k = 0; k < ndim; k++) {
        const int axis = order[k];
        if (shape[axis] != 1 && strides[axis] != expected)
            return 0;
        expected *= shape[axis];
    }
    return 1;
}

PyArrayObject *bn_input_like(PyObject *obj, PyArrayObject *like, const char *name)
{
    PyArrayObject *arr = bn_input_array(obj, PyArray_TYPE(like), name);
    if (arr == NULL)
        return NULL;
    if (!PyArray_SAMESHAPE(arr, like)) {
        PyObject *want = shape_tuple(like), *got = shape_tuple(arr);
        if (want != NULL && got != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected shape %R (the shape of the forward's input), got %R", name, want, got);
        Py_XDECREF(want);
        Py_XDECREF(got);
        Py_DECREF(arr);
        return NULL;
    }
    if (bn_is_channels_last(arr) == bn_is_channels_last(like))
        return arr;
    /* the kernels read both in one layout: copy into the layout of `like` */
    PyArrayObject *copy = bn_output_array(Py_None, like, name);
    if (copy != NULL && PyArray_CopyInto(copy, arr) < 0)
        Py_CLEAR(copy);
    Py_DECREF(arr);
    return copy;
}


int bn_check_layout(PyArrayObject *x, int min_ndim, int max_ndim, npy_intp channels)
{
    const int ndim = PyArray_NDIM(x);
    if (ndim < min_ndim || (max_ndim >= 0 && ndim > max_ndim)) {
        if (max_ndim < 0)
            PyErr_Format(PyExc_ValueError, "expected at least %dD input (got %dD input)", min_ndim, ndim);
        else if (min_ndim == max_ndim)
            PyErr_Format(PyExc_ValueError, "expected %dD input (got %dD input)", min_ndim, ndim);
        else
            PyErr_Format(PyExc_ValueError, "expected %dD or %dD input (got %dD input)", min_ndim, max_ndim,
                         ndim);
        return -1;
    }
    if (channels >= 0 && PyArray_DIM(x, 1) != channels) {
        /* an (N, *spatial, C) array passed as is: bnorm reads channels-last memory
           natively, but the array must be indexed (N, C, *spatial) */
        if (ndim >= 3 && PyArray_DIM(x, ndim - 1) == channels)
            PyErr_Format(PyExc_ValueError, "expected %zd channels (axis 1), got %zd; the last axis has %zd: for "
                         "a channels-last (N, *spatial, C) array pass np.moveaxis(x, -1, 1), a view bnorm reads "
                         "without a copy", (Py_ssize_t)channels, (Py_ssize_t)PyArray_DIM(x, 1),
                         (Py_ssize_t)channels);
        else
            PyErr_Format(PyExc_ValueError, "expected %zd channels (axis 1), got %zd", (Py_ssize_t)channels,
                         (Py_ssize_t)PyArray_DIM(x, 1));
        return -1;
    }
    return 0;
}

int bn_check_batch_size(PyArrayObject *x)
{
    const bn_dims d = bn_dims_of(x);
    if (d.n * d.s != 1)
        return 0;
    PyObject *shape = shape_tuple(x);
    if (shape != NULL) {
        PyErr_Format(PyExc_ValueError, "Expected more than 1 value per channel when training, got input size %R",
                     shape);
        Py_DECREF(shape);
    }
    return -1;
}

bn_dims bn_dims_of(PyArrayObject *x)
{
    bn_dims d = {PyArray_DIM(x, 0), PyArray_DIM(x, 1), 1, bn_is_channels_last(x)};
    for (int i = 2; i < PyArray_NDIM(x); i++)
        d.s *= PyArray_DIM(x, i);
    return d;
}

/* A new array shaped like `like` (N, C, *spatial) whose memory is (N, *spatial, C). */
static PyArrayObject *new_channels_last(PyArrayObject *like)
{
    const int ndim = PyArray_NDIM(like);
    npy_intp memory_shape[NPY_MAXDIMS];
    npy_intp axes[NPY_MAXDIMS];
    memory_shape[0] = PyArray_DIM(like, 0);
    for (int k = 2; k < ndim; k++)
        memory_shape[k - 1] = PyArray_DIM(like, k);
    memory_shape[ndim - 1] = PyArray_DIM(like, 1);
    axes[0] = 0;
    axes[1] = ndim - 1;
    for (int k = 2; k < ndim; k++)
        axes[k] = k - 1;
    PyArrayObject *memory = bn_new_output(ndim, memory_shape, PyArray_TYPE(like));
    if (memory == NULL)
        return NULL;
    PyArray_Dims permutation = {axes, ndim};
    PyArrayObject *view = (PyArrayObject *)PyArray_Transpose(memory, &permutation);
    Py_DECREF(memory);
    return view;
}

PyArrayObject *bn_output_array(PyObject *out, PyArrayObject *like, const char *name)
{
    const int typenum = PyArray_TYPE(like);
    const int channels_last = bn_is_channels_last(like);
    if (out == NULL || out == Py_None)
        return channels_last ? new_channels_last(like) : bn_new_output(PyArray_NDIM(like), PyArray_SHAPE(like), typenum);
    if (!PyArray_Check(out)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray or None, got %s", name, Py_TYPE(out)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)out;
    if (PyArray_TYPE(arr) != typenum || !PyArray_ISNOTSWAPPED(arr)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a native %s array, got dtype %S", name, typenum_name(typenum),
                     (PyObject *)PyArray_DESCR(arr));
        return NULL;
    }
    if (!PyArray_SAMESHAPE(arr, like)) {
        PyObject *want = shape_tuple(like), *got = shape_tuple(arr);
        if (want != NULL && got != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected shape %R, got %R", name, want, got);
        Py_XDECREF(want);
        Py_XDECREF(got);
        return NULL;
    }
    if (!(channels_last ? bn_is_channels_last(arr) : PyArray_IS_C_CONTIGUOUS(arr)) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: expected an aligned array in the memory layout of the input (%s)", name,
                     channels_last ? "channels-last" : "C-contiguous");
        return NULL;
    }
    if (PyArray_FailUnlessWriteable(arr, name) < 0)
        return NULL;
    Py_INCREF(arr);
    return arr;
}

bn_memory_relation bn_relate_memory(PyArrayObject *a, PyArrayObject *b)
{
    const char *a0 = PyArray_BYTES(a), *b0 = PyArray_BYTES(b);
    const char *a1 = a0 + PyArray_NBYTES(a), *b1 = b0 + PyArray_NBYTES(b);
    if (a1 <= b0 || b1 <= a0)
        return BN_DISJOINT;
    return (a0 == b0 && a1 == b1) ? BN_SAME_MEMORY : BN_PARTIAL_OVERLAP;
}

int bn_param_array(PyObject *obj, int typenum, npy_intp channels, const char *name, int in_place,
                   PyArrayObject **result)
{
    *result = NULL;
    if (obj == NULL || obj == Py_None)
        return 0;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray of shape (%zd,) and dtype %s, got %s", name,
                     (Py_ssize_t)channels, typenum_name(typenum), Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != typenum) {
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %s, got %S", name, typenum_name(typenum),
                     (PyObject *)PyArray_DESCR(arr));
        return -1;
    }
    if (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != channels) {
        PyObject *got = shape_tuple(arr);
        if (got != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected shape (%zd,), got %R", name, (Py_ssize_t)channels, got);
        Py_XDECREF(got);
        return -1;
    }
    if (in_place) {
        /* Updated where it is, as torch does: any strides are fine, since a
           contiguous copy is written back by PyArray_ResolveWritebackIfCopy. */
        if (PyArray_FailUnlessWriteable(arr, name) < 0)
            return -1;
        *result = (PyArrayObject *)PyArray_FromArray(arr, PyArray_DescrFromType(typenum), NPY_ARRAY_INOUT_ARRAY2);
        return *result == NULL ? -1 : 0;
    }
    *result = (PyArrayObject *)PyArray_FromArray(arr, PyArray_DescrFromType(typenum), NPY_ARRAY_IN_ARRAY);
    return *result == NULL ? -1 : 0;
}

int bn_activation_converter(PyObject *obj, void *relu)
{
    if (obj == Py_None) {
        *(int *)relu = 0;
        return 1;
    }
    if (PyUnicode_Check(obj) && PyUnicode_CompareWithASCIIString(obj, "relu") == 0) {
        *(int *)relu = 1;
        return 1;
    }
    PyErr_Format(PyExc_ValueError, "activation must be None or 'relu', got %R", obj);
    return 0;
}

/* A real number from a Python object, or -1 with TypeError naming `name`. */
/* A real number from a Python object, or -1 with a TypeError that names `name`. */
static int real_number(PyObject *obj, const char *name, double *value)
{
    *value = PyFloat_AsDouble(obj);
    if (*value == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a float, got %s", name, Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    return 0;
}

int bn_eps_converter(PyObject *obj, void *eps)
{
    double value;
    if (real_number(obj, "eps", &value) < 0)
        return 0;
    /* torch's modules refuse eps <= 0 at their forward ("eps must be positive", which this message
       starts with) and its functional layer eps < 0; eps <= 0, NaN or inf can only give NaN. */
    if (!(value > 0.0 && value < INFINITY)) {
        PyErr_Format(PyExc_ValueError, "eps must be positive and finite, got %R", obj);
        return 0;
    }
    *(double *)eps = value;
    return 1;
}

int bn_momentum_converter(PyObject *obj, void *momentum)
{
    if (obj == Py_None) {
        *(double *)momentum = NAN;
        return 1;
    }
    double value;
    if (real_number(obj, "momentum", &value) < 0)
        return 0;
    /* Any finite float, as torch accepts (its own samples use -1.2); NaN stands for None. */
    if (!isfinite(value)) {
        PyErr_Format(PyExc_ValueError, "momentum must be a finite float or None, got %R", obj);
        return 0;
    }
    *(double *)momentum = value;
    return 1;
}

int bn_raise_status(bn_status status)
{
    if (status == BN_OK)
        return 0;
    PyErr_NoMemory();
    return -1;
}

/* Releases a running statistic from bn_param_array(in_place), first copying a
 * contiguous stand-in for a strided array back into it when the call succeeded. */
void bn_release_running(PyArrayObject *arr, int succeeded)
{
    if (arr == NULL)
        return;
    if (succeeded)
        PyArray_ResolveWritebackIfCopy(arr);
    else
        PyArray_DiscardWritebackIfCopy(arr);
    Py_DECREF(arr);
}
