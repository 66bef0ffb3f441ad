/*
 * The functional layer: batch_norm and batch_norm_backward on plain arrays, the
 * same kernels as the module type without any state. Mirrors
 * torch.nn.functional.batch_norm, and returns the statistics backward needs.
 */
#include <math.h>

#include "binding.h"

static PyArrayObject *new_stats_vector(npy_intp channels)
{
    return (PyArrayObject *)PyArray_EMPTY(1, &channels, NPY_DOUBLE, 0);
}

/* bn_param_array for this layer, which, as torch does, also takes float16 parameters and running
 * statistics with float16 input (the modules keep float32 ones): the kernels read them, and update
 * running statistics, through float32 copies that bn_release_running copies back. */
static int param_for_input(PyObject *obj, int x_typenum, npy_intp channels, const char *name, int in_place,
                           PyArrayObject **result)
{
    if (x_typenum != NPY_HALF || obj == NULL || !PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_HALF)
        return bn_param_array(obj, bn_param_typenum(x_typenum), channels, name, in_place, result);
    PyArrayObject *checked; /* the shape checks and messages of every parameter */
    if (bn_param_array(obj, NPY_HALF, channels, name, 0, &checked) < 0)
        return -1;
    Py_DECREF(checked);
    if (in_place && PyArray_FailUnlessWriteable((PyArrayObject *)obj, name) < 0)
        return -1;
    *result = (PyArrayObject *)PyArray_FromArray((PyArrayObject *)obj, PyArray_DescrFromType(NPY_FLOAT),
                                                 in_place ? NPY_ARRAY_INOUT_ARRAY2 : NPY_ARRAY_IN_ARRAY);
    return *result == NULL ? -1 : 0;
}

static PyObject *batch_norm(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "running_mean", "running_var", "weight", "bias", "training",
                             "momentum", "eps", "out", "activation", NULL};
    PyObject *x_obj, *rm_obj = Py_None, *rv_obj = Py_None, *w_obj = Py_None, *b_obj = Py_None, *out_obj = Py_None;
    int training = 0, relu = 0;
    double momentum = 0.1, eps = 1e-5;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOOOpO&O&O$O&:batch_norm", kwlist, &x_obj, &rm_obj, &rv_obj,
                                     &w_obj, &b_obj, &training, bn_momentum_converter, &momentum, bn_eps_converter,
                                     &eps, &out_obj, bn_activation_converter, &relu))
        return NULL;
    /* as in torch: the module's cumulative average (momentum=None) needs a batch count this layer does not keep */
    if (isnan(momentum)) {
        PyErr_SetString(PyExc_TypeError, "momentum must be a float; momentum=None (a cumulative average) needs "
                                         "num_batches_tracked: use a BatchNorm module, or pass 1/num_batches_tracked");
        return NULL;
    }
    if (!training && (rm_obj == Py_None || rv_obj == Py_None)) {
        PyErr_SetString(PyExc_RuntimeError, rm_obj == Py_None ? "running_mean must be defined in evaluation mode"
                                                              : "running_var must be defined in evaluation mode");
        return NULL;
    }
    PyArrayObject *x = bn_input_array(x_obj, -1, "x");
    if (x == NULL)
        return NULL;
    PyArrayObject *rm = NULL, *rv = NULL, *weight = NULL, *bias = NULL, *y = NULL, *mean = NULL, *invstd = NULL,
                  *var = NULL;
    PyObject *result = NULL;
    if (bn_check_layout(x, 2, -1, -1) < 0)
        goto done;
    const int typenum = PyArray_TYPE(x);
    const npy_intp channels = PyArray_DIM(x, 1);
    /* written only when training; a strided one is updated through a contiguous copy */
    if (param_for_input(rm_obj, typenum, channels, "running_mean", training, &rm) < 0 ||
        param_for_input(rv_obj, typenum, channels, "running_var", training, &rv) < 0 ||
        param_for_input(w_obj, typenum, channels, "weight", 0, &weight) < 0 ||
        param_for_input(b_obj, typenum, channels, "bias", 0, &bias) < 0)
        goto done;
    if ((rm == NULL) != (rv == NULL)) {
        PyErr_SetString(PyExc_ValueError, "running_mean and running_var must be given together");
        goto done;
    }
    const int batch_stats = bn_uses_batch_stats(training, rm != NULL);
    if (batch_stats && bn_check_batch_size(x) < 0)
        goto done;
    if ((y = bn_output_array(out_obj, x, "out")) == NULL)
        goto done;
    if (bn_relate_memory(x, y) == BN_PARTIAL_OVERLAP) {
        PyErr_SetString(PyExc_ValueError, "out: must be x itself or not overlap it");
        goto done;
    }
    if ((mean = new_stats_vector(channels)) == NULL || (invstd = new_stats_vector(channels)) == NULL ||
        (var = new_stats_vector(channels)) == NULL)
        goto done;
    bn_forward_call call = {
        .dims = bn_dims_of(x),
        .x = PyArray_DATA(x),
        .y = PyArray_DATA(y),
        .gamma = weight ? PyArray_DATA(weight) : NULL,
        .beta = bias ? PyArray_DATA(bias) : NULL,
        .eps = eps,
        .relu = relu,
        .training = training,
        .running_mean = rm ? PyArray_DATA(rm) : NULL,
        .running_var = rv ? PyArray_DATA(rv) : NULL,
        .momentum = momentum, /* not NAN: refused above, there is no num_batches_tracked */
        .mean = PyArray_DATA(mean),
        .var = PyArray_DATA(var),
        .invstd = PyArray_DATA(invstd),
    };
    bn_dtype_from_typenum(typenum, &call.dtype);
    bn_status status;
    BN_WITHOUT_GIL(status, bn_run_forward(&call));
    if (bn_raise_status(status) == 0)
        result = PyTuple_Pack(3, y, mean, invstd);
done:
    Py_DECREF(x);
    bn_release_running(rm, result != NULL);
    bn_release_running(rv, result != NULL);
    Py_XDECREF(weight);
    Py_XDECREF(bias);
    Py_XDECREF(y);
    Py_XDECREF(mean);
    Py_XDECREF(invstd);
    Py_XDECREF(var);
    return result;
}

/* save_mean / save_invstd: any array-like of C numbers, used as float64. */
static PyArrayObject *stats_vector(PyObject *obj, npy_intp channels, const char *name)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(obj, NPY_DOUBLE, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (arr == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a 1-d float array of length %zd (from batch_norm), got %s", name,
                     (Py_ssize_t)channels, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyArray_DIM(arr, 0) != channels) {
        PyErr_Format(PyExc_ValueError, "%s: expected length %zd, got %zd", name, (Py_ssize_t)channels,
                     (Py_ssize_t)PyArray_DIM(arr, 0));
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *batch_norm_backward(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dy", "x", "save_mean", "save_invstd", "weight", "training", "out", "bias", "activation",
                             NULL};
    PyObject *dy_obj, *x_obj, *mean_obj, *invstd_obj, *w_obj = Py_None, *out_obj = Py_None, *b_obj = Py_None;
    int training = 1, relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OpO$OO&:batch_norm_backward", kwlist, &dy_obj, &x_obj,
                                     &mean_obj, &invstd_obj, &w_obj, &training, &out_obj, &b_obj,
                                     bn_activation_converter, &relu))
        return NULL;
    PyArrayObject *x = bn_input_array(x_obj, -1, "x");
    if (x == NULL)
        return NULL;
    PyArrayObject *dy = NULL, *mean = NULL, *invstd = NULL, *weight = NULL, *bias = NULL, *dx = NULL,
                  *dweight = NULL, *dbias = NULL;
    PyObject *result = NULL;
    if (bn_check_layout(x, 2, -1, -1) < 0)
        goto done;
    const int typenum = PyArray_TYPE(x);
    const npy_intp channels = PyArray_DIM(x, 1);
    if ((dy = bn_input_like(dy_obj, x, "dy")) == NULL)
        goto done;
    if ((mean = stats_vector(mean_obj, channels, "save_mean")) == NULL ||
        (invstd = stats_vector(invstd_obj, channels, "save_invstd")) == NULL ||
        param_for_input(w_obj, typenum, channels, "weight", 0, &weight) < 0 ||
        param_for_input(b_obj, typenum, channels, "bias", 0, &bias) < 0)
        goto done;
    if ((dx = bn_output_array(out_obj, x, "out")) == NULL)
        goto done;
    if (bn_relate_memory(dx, x) != BN_DISJOINT || bn_relate_memory(dx, dy) == BN_PARTIAL_OVERLAP) {
        PyErr_SetString(PyExc_ValueError, "out: must not overlap x; it may be dy itself");
        goto done;
    }
    if ((dweight = (PyArrayObject *)PyArray_EMPTY(1, &channels, bn_param_typenum(typenum), 0)) == NULL ||
        (dbias = (PyArrayObject *)PyArray_EMPTY(1, &channels, bn_param_typenum(typenum), 0)) == NULL)
        goto done;
    bn_dtype dtype;
    bn_dtype_from_typenum(typenum, &dtype);
    bn_status status;
    BN_WITHOUT_GIL(status, bn_backward(dtype, bn_dims_of(x), PyArray_DATA(x), PyArray_DATA(dy), PyArray_DATA(dx),
                                       weight ? PyArray_DATA(weight) : NULL, bias ? PyArray_DATA(bias) : NULL,
                                       PyArray_DATA(mean), PyArray_DATA(invstd), training, relu,
                                       PyArray_DATA(dweight), PyArray_DATA(dbias)));
    if (bn_raise_status(status) == 0)
        result = PyTuple_Pack(3, dx, dweight, dbias);
done:
    Py_DECREF(x);
    Py_XDECREF(dy);
    Py_XDECREF(mean);
    Py_XDECREF(invstd);
    Py_XDECREF(weight);
    Py_XDECREF(bias);
    Py_XDECREF(dx);
    Py_XDECREF(dweight);
    Py_XDECREF(dbias);
    return result;
}

PyMethodDef bn_functional_methods[] = {
    {"batch_norm", (PyCFunction)(void (*)(void))batch_norm, METH_VARARGS | METH_KEYWORDS,
     "batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1, "
     "eps=1e-05, out=None, *, activation=None)\n--\n\n"
     "Batch normalisation of x (N, C, *spatial) over all axes but 1; returns (y, save_mean, save_invstd).\n\n"
     "training=True uses the batch's statistics; training=False uses running_mean and running_var, which it\n"
     "then requires (RuntimeError without them, as in torch). When training with running statistics, updates\n"
     "them in place, strided ones too (momentum, any finite float, is the weight of\n"
     "the new batch; the variance stored is unbiased). save_mean and save_invstd are float64 arrays of\n"
     "shape (C,), the statistics actually used, for batch_norm_backward. activation='relu' applies\n"
     "max(0, .) to the output in the same pass. weight, bias and the running statistics have x's dtype;\n"
     "with float16 x they may be float32 or float16, as in torch."},
    {"batch_norm_backward", (PyCFunction)(void (*)(void))batch_norm_backward, METH_VARARGS | METH_KEYWORDS,
     "batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, training=True, out=None, *, bias=None, "
     "activation=None)\n--\n\n"
     "Gradients (dx, dweight, dbias) of batch_norm given dy. training=True: save_mean and save_invstd are x's\n"
     "batch statistics and the gradient flows through them; training=False: they are constants (eval mode).\n"
     "With activation='relu' (and the forward's bias), dy is masked where the forward's output was 0.\n"
     "weight and bias as for batch_norm; dweight and dbias are float32 for float16 x."},
    {NULL},
};
