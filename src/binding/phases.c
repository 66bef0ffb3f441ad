/*
 * The split phases of training batch norm in the functional layer, for batches
 * split over processes: each process computes its part's moments, the processes
 * exchange them (any all-gather), each merges all of them in the same order and
 * normalises its part; backward alike with the gradient sums. Named after PyTorch's
 * internal functions of the same roles (torch.batch_norm_stats and so on); the
 * statistics exchanged are (count, mean, M2) in float64, not sums of squares.
 */
#include <math.h>
#include <string.h>

#include "binding.h"

/* A float64 array of `ndim` dimensions whose sizes are `shape` (-1: any), from any
 * array-like of real numbers; raises TypeError or ValueError naming `name` and where
 * such an argument comes from (`source`). */
static PyArrayObject *float64_array(PyObject *obj, int ndim, const npy_intp *shape, const char *name,
                                    const char *source)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(obj, NPY_DOUBLE, 0, 0, NPY_ARRAY_IN_ARRAY);
    if (arr == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a float64 array (%s), got %s", name, source,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int matches = PyArray_NDIM(arr) == ndim;
    for (int k = 0; matches && k < ndim; k++)
        matches = shape[k] < 0 || PyArray_DIM(arr, k) == shape[k];
    if (!matches) {
        PyObject *got = PyArray_IntTupleFromIntp(PyArray_NDIM(arr), PyArray_SHAPE(arr));
        char want[96] = "(";
        for (int k = 0; k < ndim; k++) {
            const size_t used = strlen(want);
            if (shape[k] < 0)
                snprintf(want + used, sizeof want - used, "%s%s", k ? ", " : "", k == 0 ? "parts" : "any");
            else
                snprintf(want + used, sizeof want - used, "%s%zd", k ? ", " : "", (Py_ssize_t)shape[k]);
        }
        strncat(want, ndim == 1 ? ",)" : ")", sizeof want - strlen(want) - 1);
        if (got != NULL)
            PyErr_Format(PyExc_ValueError, "%s: expected shape %s (%s), got %R", name, want, source, got);
        Py_XDECREF(got);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* x as the phases read it: a float16/32/64 array (N, C, *spatial). */
static PyArrayObject *phase_input(PyObject *obj)
{
    PyArrayObject *x = bn_input_array(obj, -1, "x");
    if (x != NULL && bn_check_layout(x, 2, -1, -1) < 0)
        Py_CLEAR(x);
    return x;
}

static bn_dtype dtype_of(PyArrayObject *x)
{
    bn_dtype dtype;
    bn_dtype_from_typenum(PyArray_TYPE(x), &dtype);
    return dtype;
}

static PyObject *batch_norm_stats(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", NULL};
    PyObject *x_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:batch_norm_stats", kwlist, &x_obj))
        return NULL;
    PyArrayObject *x = phase_input(x_obj);
    if (x == NULL)
        return NULL;
    npy_intp shape[2] = {3, PyArray_DIM(x, 1)};
    PyArrayObject *moments = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_DOUBLE, 0);
    if (moments != NULL) {
        bn_status status;
        BN_WITHOUT_GIL(status, bn_local_moments(dtype_of(x), bn_dims_of(x), PyArray_DATA(x), PyArray_DATA(moments)));
        if (bn_raise_status(status) < 0)
            Py_CLEAR(moments);
    }
    Py_DECREF(x);
    return (PyObject *)moments;
}

/* A running statistic updated in place: float32 or float64, of shape (channels,). */
static int running_array(PyObject *obj, int typenum, npy_intp channels, const char *name, PyArrayObject **result)
{
    if (PyArray_Check(obj) && typenum < 0) {
        typenum = PyArray_TYPE((PyArrayObject *)obj);
        if (typenum != NPY_FLOAT && typenum != NPY_DOUBLE) {
            PyErr_Format(PyExc_TypeError, "%s: expected dtype float32 or float64, got %S", name,
                         (PyObject *)PyArray_DESCR((PyArrayObject *)obj));
            return -1;
        }
    }
    return bn_param_array(obj, typenum < 0 ? NPY_DOUBLE : typenum, channels, name, 1, result);
}

static PyObject *batch_norm_gather_stats_with_counts(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"moments", "running_mean", "running_var", "momentum", "eps", NULL};
    PyObject *moments_obj, *rm_obj = Py_None, *rv_obj = Py_None;
    double momentum = 0.1, eps = 1e-5;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOO&O&:batch_norm_gather_stats_with_counts", kwlist,
                                     &moments_obj, &rm_obj, &rv_obj, bn_momentum_converter, &momentum,
                                     bn_eps_converter, &eps))
        return NULL;
    if (isnan(momentum)) {
        PyErr_SetString(PyExc_TypeError, "momentum must be a float; momentum=None (a cumulative average) needs "
                                         "num_batches_tracked: pass 1/num_batches_tracked");
        return NULL;
    }
    const npy_intp any_shape[3] = {-1, 3, -1};
    PyArrayObject *moments = float64_array(moments_obj, 3, any_shape, "moments",
                                           "every part's batch_norm_stats(x) stacked in part order");
    if (moments == NULL)
        return NULL;
    const npy_intp parts = PyArray_DIM(moments, 0), channels = PyArray_DIM(moments, 2);
    PyArrayObject *rm = NULL, *rv = NULL, *mean = NULL, *invstd = NULL, *var = NULL, *count = NULL;
    PyObject *result = NULL;
    if (running_array(rm_obj, -1, channels, "running_mean", &rm) < 0 ||
        running_array(rv_obj, rm ? PyArray_TYPE(rm) : -1, channels, "running_var", &rv) < 0)
        goto done;
    if ((rm == NULL) != (rv == NULL)) {
        PyErr_SetString(PyExc_ValueError, "running_mean and running_var must be given together");
        goto done;
    }
    const double *m = PyArray_DATA(moments);
    for (npy_intp i = 0; i < parts * 3 * channels; i += 3 * channels)
        for (npy_intp c = 0; c < channels; c++)
            if (!(m[i + c] >= 0 && m[i + c] == m[i] && m[i + c] == floor(m[i + c]))) {
                PyErr_Format(PyExc_ValueError, "moments: part %zd, channel %zd: expected the part's count, one "
                             "non-negative integer in every channel of moments[p, 0, :], as batch_norm_stats gives",
                             (Py_ssize_t)(i / (3 * channels)), (Py_ssize_t)c);
                goto done;
            }
    if ((mean = (PyArrayObject *)PyArray_EMPTY(1, &channels, NPY_DOUBLE, 0)) == NULL ||
        (invstd = (PyArrayObject *)PyArray_EMPTY(1, &channels, NPY_DOUBLE, 0)) == NULL ||
        (var = (PyArrayObject *)PyArray_EMPTY(1, &channels, NPY_DOUBLE, 0)) == NULL ||
        (count = (PyArrayObject *)PyArray_EMPTY(1, &channels, NPY_DOUBLE, 0)) == NULL)
        goto done;
    double total = 0;
    for (npy_intp i = 0; i < parts * 3 * channels; i += 3 * channels)
        total += m[i];
    if (total == 1 && channels > 0) {
        PyErr_Format(PyExc_ValueError, "Expected more than 1 value per channel when training, got 1 value per "
                     "channel over all %zd parts", (Py_ssize_t)parts);
        goto done;
    }
    bn_dtype running_dtype = BN_FLOAT64; /* running_array took float32 or float64 */
    if (rm != NULL)
        bn_dtype_from_typenum(PyArray_TYPE(rm), &running_dtype);
    Py_BEGIN_ALLOW_THREADS
    bn_merge_moments(parts, channels, m, eps, PyArray_DATA(count), PyArray_DATA(mean), PyArray_DATA(var),
                     PyArray_DATA(invstd));
    if (rm != NULL && total > 0)
        bn_update_running(running_dtype, channels, PyArray_DATA(rm), PyArray_DATA(rv), PyArray_DATA(mean),
                          PyArray_DATA(var), (int64_t)total, momentum);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OOL", mean, invstd, (long long)total);
done:
    Py_DECREF(moments);
    bn_release_running(rm, result != NULL);
    bn_release_running(rv, result != NULL);
    Py_XDECREF(mean);
    Py_XDECREF(invstd);
    Py_XDECREF(var);
    Py_XDECREF(count);
    return result;
}

/* The per-channel arguments of the output phases: mean and invstd (float64, from
 * batch_norm_gather_stats_with_counts), weight and bias (the parameter dtype). */
typedef struct {
    PyArrayObject *mean, *invstd, *weight, *bias;
} channel_args;

static int read_channel_args(PyArrayObject *x, PyObject *mean, PyObject *invstd, PyObject *weight, PyObject *bias,
                             channel_args *a)
{
    const npy_intp channels = PyArray_DIM(x, 1);
    const int param_typenum = bn_param_typenum(PyArray_TYPE(x));
    const char *source = "from batch_norm_gather_stats_with_counts";
    *a = (channel_args){NULL};
    if ((a->mean = float64_array(mean, 1, &channels, "mean", source)) == NULL ||
        (a->invstd = float64_array(invstd, 1, &channels, "invstd", source)) == NULL ||
        bn_param_array(weight, param_typenum, channels, "weight", 0, &a->weight) < 0 ||
        bn_param_array(bias, param_typenum, channels, "bias", 0, &a->bias) < 0)
        return -1;
    return 0;
}

static void release_channel_args(channel_args *a)
{
    Py_XDECREF(a->mean);
    Py_XDECREF(a->invstd);
    Py_XDECREF(a->weight);
    Py_XDECREF(a->bias);
}

static const void *data_or_null(PyArrayObject *a) { return a ? PyArray_DATA(a) : NULL; }

static PyObject *batch_norm_elemt(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "mean", "invstd", "weight", "bias", "out", "activation", NULL};
    PyObject *x_obj, *mean_obj, *invstd_obj, *w_obj = Py_None, *b_obj = Py_None, *out_obj = Py_None;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOO$O&:batch_norm_elemt", kwlist, &x_obj, &mean_obj,
                                     &invstd_obj, &w_obj, &b_obj, &out_obj, bn_activation_converter, &relu))
        return NULL;
    PyArrayObject *x = phase_input(x_obj), *y = NULL;
    if (x == NULL)
        return NULL;
    channel_args a;
    PyObject *result = NULL;
    if (read_channel_args(x, mean_obj, invstd_obj, w_obj, b_obj, &a) < 0 ||
        (y = bn_output_array(out_obj, x, "out")) == NULL)
        goto done;
    if (bn_relate_memory(x, y) == BN_PARTIAL_OVERLAP) {
        PyErr_SetString(PyExc_ValueError, "out: must be x itself or not overlap it");
        goto done;
    }
    bn_status status;
    BN_WITHOUT_GIL(status, bn_forward_eval(dtype_of(x), bn_dims_of(x), PyArray_DATA(x), PyArray_DATA(y),
                                           data_or_null(a.weight), data_or_null(a.bias), PyArray_DATA(a.mean),
                                           PyArray_DATA(a.invstd), relu));
    if (bn_raise_status(status) == 0)
        result = Py_NewRef(y);
done:
    Py_DECREF(x);
    Py_XDECREF(y);
    release_channel_args(&a);
    return result;
}

static PyObject *batch_norm_backward_reduce(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dy", "x", "mean", "invstd", "weight", "bias", "activation", NULL};
    PyObject *dy_obj, *x_obj, *mean_obj, *invstd_obj, *w_obj = Py_None, *b_obj = Py_None;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OO$O&:batch_norm_backward_reduce", kwlist, &dy_obj, &x_obj,
                                     &mean_obj, &invstd_obj, &w_obj, &b_obj, bn_activation_converter, &relu))
        return NULL;
    PyArrayObject *x = phase_input(x_obj), *dy = NULL, *sums = NULL;
    if (x == NULL)
        return NULL;
    channel_args a;
    PyObject *result = NULL;
    npy_intp shape[2] = {2, PyArray_DIM(x, 1)};
    if (read_channel_args(x, mean_obj, invstd_obj, w_obj, b_obj, &a) < 0 ||
        (dy = bn_input_like(dy_obj, x, "dy")) == NULL ||
        (sums = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_DOUBLE, 0)) == NULL)
        goto done;
    double *s = PyArray_DATA(sums);
    bn_status status;
    BN_WITHOUT_GIL(status, bn_grad_sums(dtype_of(x), bn_dims_of(x), PyArray_DATA(x), PyArray_DATA(dy),
                                        data_or_null(a.weight), data_or_null(a.bias), PyArray_DATA(a.mean),
                                        PyArray_DATA(a.invstd), relu, s, s + shape[1]));
    if (bn_raise_status(status) == 0)
        result = Py_NewRef(sums);
done:
    Py_DECREF(x);
    Py_XDECREF(dy);
    Py_XDECREF(sums);
    release_channel_args(&a);
    return result;
}

static PyObject *batch_norm_backward_elemt(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dy", "x", "mean", "invstd", "sums", "count", "weight", "out", "bias", "activation",
                             NULL};
    PyObject *dy_obj, *x_obj, *mean_obj, *invstd_obj, *sums_obj, *w_obj = Py_None, *b_obj = Py_None,
                                                                 *out_obj = Py_None;
    long long count;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOL|OO$OO&:batch_norm_backward_elemt", kwlist, &dy_obj,
                                     &x_obj, &mean_obj, &invstd_obj, &sums_obj, &count, &w_obj, &out_obj, &b_obj,
                                     bn_activation_converter, &relu))
        return NULL;
    PyArrayObject *x = phase_input(x_obj), *dy = NULL, *sums = NULL, *dx = NULL;
    if (x == NULL)
        return NULL;
    channel_args a;
    PyObject *result = NULL;
    const bn_dims dims = bn_dims_of(x);
    const npy_intp shape[2] = {2, dims.c};
    if (read_channel_args(x, mean_obj, invstd_obj, w_obj, b_obj, &a) < 0 ||
        (dy = bn_input_like(dy_obj, x, "dy")) == NULL ||
        (sums = float64_array(sums_obj, 2, shape, "sums",
                              "the sum over every part of batch_norm_backward_reduce(...), in part order")) == NULL)
        goto done;
    if (count < dims.n * dims.s) {
        PyErr_Format(PyExc_ValueError, "count: expected the number of values per channel in the whole batch "
                     "(the count from batch_norm_gather_stats_with_counts), at least %lld here, got %lld",
                     (long long)(dims.n * dims.s), count);
        goto done;
    }
    if ((dx = bn_output_array(out_obj, x, "out")) == NULL)
        goto done;
    if (bn_relate_memory(dx, x) != BN_DISJOINT || bn_relate_memory(dx, dy) == BN_PARTIAL_OVERLAP) {
        PyErr_SetString(PyExc_ValueError, "out: must not overlap x; it may be dy itself");
        goto done;
    }
    const double *s = PyArray_DATA(sums);
    bn_status status;
    BN_WITHOUT_GIL(status, bn_backward_from_sums(dtype_of(x), dims, PyArray_DATA(x), PyArray_DATA(dy),
                                                 PyArray_DATA(dx), data_or_null(a.weight), data_or_null(a.bias),
                                                 PyArray_DATA(a.mean), PyArray_DATA(a.invstd), s, s + dims.c,
                                                 (int64_t)count, relu));
    if (bn_raise_status(status) == 0)
        result = Py_NewRef(dx);
done:
    Py_DECREF(x);
    Py_XDECREF(dy);
    Py_XDECREF(sums);
    Py_XDECREF(dx);
    release_channel_args(&a);
    return result;
}

PyMethodDef bn_phase_methods[] = {
    {"batch_norm_stats", (PyCFunction)(void (*)(void))batch_norm_stats, METH_VARARGS | METH_KEYWORDS,
     "batch_norm_stats(x)\n--\n\n"
     "This part's moments of x (N, C, *spatial): a float64 array (3, C) of the count, mean and M2 (centred\n"
     "sum of squares) per channel. An empty part (N = 0) gives count, mean and M2 0. Gather every part's\n"
     "array (any all-gather), stack them in part order and pass them to batch_norm_gather_stats_with_counts."},
    {"batch_norm_gather_stats_with_counts", (PyCFunction)(void (*)(void))batch_norm_gather_stats_with_counts,
     METH_VARARGS | METH_KEYWORDS,
     "batch_norm_gather_stats_with_counts(moments, running_mean=None, running_var=None, momentum=0.1, "
     "eps=1e-05)\n--\n\n"
     "Merges the parts' moments (P, 3, C) in part order with Chan's formula; returns (mean, invstd, count)\n"
     "of the whole batch: float64 arrays (C,) and the number of values per channel. Every process merging\n"
     "the same array gets the same bits. Given running_mean and running_var (float32 or float64), updates\n"
     "them in place with the unbiased variance of the whole batch, unless it is empty. Raises ValueError\n"
     "when the whole batch has one value per channel, as training does in torch."},
    {"batch_norm_elemt", (PyCFunction)(void (*)(void))batch_norm_elemt, METH_VARARGS | METH_KEYWORDS,
     "batch_norm_elemt(x, mean, invstd, weight=None, bias=None, out=None, *, activation=None)\n--\n\n"
     "(x - mean) * invstd * weight + bias for this part, with the statistics of the whole batch;\n"
     "activation='relu' applies max(0, .) in the same pass. out may be x itself."},
    {"batch_norm_backward_reduce", (PyCFunction)(void (*)(void))batch_norm_backward_reduce,
     METH_VARARGS | METH_KEYWORDS,
     "batch_norm_backward_reduce(dy, x, mean, invstd, weight=None, bias=None, *, activation=None)\n--\n\n"
     "This part's gradient sums: a float64 array (2, C) of sum(dy) and sum(dy * (x - mean)) per channel\n"
     "(dy masked where the forward's ReLU output 0, which needs the forward's weight and bias). Row 0 is\n"
     "this part's grad of bias, row 1 times invstd its grad of weight. Sum every part's array in part\n"
     "order for batch_norm_backward_elemt."},
    {"batch_norm_backward_elemt", (PyCFunction)(void (*)(void))batch_norm_backward_elemt,
     METH_VARARGS | METH_KEYWORDS,
     "batch_norm_backward_elemt(dy, x, mean, invstd, sums, count, weight=None, out=None, *, bias=None, "
     "activation=None)\n--\n\n"
     "dx of this part, given the whole batch's mean and invstd, the sum over every part of\n"
     "batch_norm_backward_reduce (2, C) and the whole batch's count per channel. out may be dy itself."},
    {NULL},
};
