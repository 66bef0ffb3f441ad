/*
 * The batch-norm module type: parameters, running statistics and what backward
 * needs from the last forward. bnorm.BatchNorm1d/2d/3d are thin Python subclasses
 * that set `_ndim_range`, the accepted input ranks.
 *
 * Thread safety: every method that reads or writes the object's state holds the
 * object's lock; kernels run with the GIL released but the lock held, so calls on
 * one module are serialised and calls on different modules run in parallel. The
 * lock is always waited for with the GIL released, so it cannot deadlock with it.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#if !defined(_WIN32)
#include <pthread.h>
#endif

#include "binding.h"
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    unsigned long lock_generation; /* the fork_generation the lock was made in */
    int typenum;       /* of inputs and outputs */
    int param_typenum; /* of parameters, running statistics and gradients */
    bn_dtype dtype;
    int min_ndim, max_ndim;
    Py_ssize_t num_features;
    double eps;
    double momentum; /* NAN means None: cumulative moving average */
    int affine, track_running_stats, training;
    int bias; /* affine with a shift beta (torch's bias=True); affine=False has neither */
    int relu; /* fused max(0, .) after the affine transform */
    long long num_batches_tracked;
    PyArrayObject *gamma, *beta, *running_mean, *running_var; /* NULL when absent */
    PyArrayObject *grad_gamma, *grad_beta;                    /* NULL before backward */
    /* What backward needs from the last forward: its (contiguous) input, whether it
     * normalised with batch statistics, and the mean and invstd it used. */
    PyArrayObject *saved_input;
    int saved_batch_stats;
    int saved_input_overwritten;
    double *stats; /* 3 * num_features: mean, invstd, batch variance */
} BatchNormObject;

static double *saved_mean(BatchNormObject *self) { return self->stats; }
static double *saved_invstd(BatchNormObject *self) { return self->stats + self->num_features; }
static double *batch_var(BatchNormObject *self) { return self->stats + 2 * self->num_features; }

/* fork() copies a module's lock as it is: held, if another thread was running a call on
 * the module, and that thread does not exist in the child. So a lock belongs to the fork
 * generation it was made in (the child handler counts forks before the child has other
 * threads), and a module first locked in a later generation takes a fresh lock, under the
 * GIL. The copied lock is not freed: it may be held. */
static unsigned long fork_generation;
#if !defined(_WIN32)
static void count_fork(void) { fork_generation++; }
#endif

void bn_batchnorm_init_fork(void)
{
#if !defined(_WIN32)
    static int registered;
    if (!registered)
        registered = pthread_atfork(NULL, NULL, count_fork) == 0;
#endif
}

static void lock_module(BatchNormObject *self)
{
    if (self->lock_generation != fork_generation) {
        PyThread_type_lock fresh = PyThread_allocate_lock();
        if (fresh != NULL) {
            self->lock = fresh;
            self->lock_generation = fork_generation;
        }
    }
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static void unlock_module(BatchNormObject *self) { PyThread_release_lock(self->lock); }

/* ---- construction ---- */

static int read_ndim_range(PyTypeObject *type, int *min_ndim, int *max_ndim)
{
    PyObject *range = PyObject_GetAttrString((PyObject *)type, "_ndim_range");
    if (range == NULL || !PyArg_ParseTuple(range, "ii", min_ndim, max_ndim)) {
        Py_XDECREF(range);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s cannot be instantiated directly; use bnorm.BatchNorm1d, "
                     "bnorm.BatchNorm2d or bnorm.BatchNorm3d", type->tp_name);
        return -1;
    }
    Py_DECREF(range);
    return 0;
}

static int num_features_converter(PyObject *obj, void *result)
{
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "num_features must be an int (the number of channels), got %s %R",
                     Py_TYPE(obj)->tp_name, obj);
        return 0;
    }
    Py_ssize_t n = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred())
        return 0;
    *(Py_ssize_t *)result = n;
    return 1;
}

/* PyArray_DescrConverter2, with a message that names the argument (its own says
 * only "Cannot interpret 'torch.float32' as a data type"). */
static int dtype_converter(PyObject *obj, void *descr)
{
    if (PyArray_DescrConverter2(obj, descr))
        return 1;
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "dtype must be a NumPy dtype (%s), got %R", bn_dtype_list(), obj);
    return 0;
}

static PyArrayObject *filled_vector(int typenum, npy_intp length, double value)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_EMPTY(1, &length, typenum, 0);
    if (arr == NULL)
        return NULL;
    PyObject *scalar = PyFloat_FromDouble(value);
    int status = scalar == NULL ? -1 : PyArray_FillWithScalar(arr, scalar);
    Py_XDECREF(scalar);
    if (status < 0)
        Py_CLEAR(arr);
    return arr;
}

static PyObject *BatchNorm_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"num_features", "eps",  "momentum",   "affine",
                             "track_running_stats", "dtype", "activation", "bias", NULL};
    Py_ssize_t num_features;
    double eps = 1e-5, momentum = 0.1;
    int affine = 1, track = 1, relu = 0, bias = 1;
    PyArray_Descr *descr = NULL;
    int min_ndim, max_ndim;
    if (read_ndim_range(type, &min_ndim, &max_ndim) < 0)
        return NULL;
    /* argument errors name the public class (BatchNorm2d), not this base type */
    char format[96];
    snprintf(format, sizeof format, "O&|O&O&ppO&O&$p:%.60s", type->tp_name);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, format, kwlist, num_features_converter, &num_features,
                                     bn_eps_converter, &eps, bn_momentum_converter, &momentum, &affine, &track,
                                     dtype_converter, &descr, bn_activation_converter, &relu, &bias))
        return NULL;
    BatchNormObject *self = NULL;
    if (num_features <= 0) {
        PyErr_Format(PyExc_ValueError, "num_features must be a positive integer, got %zd", num_features);
        goto fail;
    }
    int typenum = descr == NULL ? NPY_FLOAT : descr->type_num;
    bn_dtype dtype;
    if (bn_dtype_from_typenum(typenum, &dtype) < 0) {
        PyErr_Format(PyExc_TypeError, "dtype must be %s, got %S", bn_dtype_list(), (PyObject *)descr);
        goto fail;
    }
    self = (BatchNormObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto fail;
    self->lock = PyThread_allocate_lock();
    self->lock_generation = fork_generation;
    /* 3 * num_features can wrap around size_t for absurd counts; such a module
       could never be allocated anyway, so refuse it before multiplying. */
    if (self->lock != NULL && (size_t)num_features <= SIZE_MAX / 3)
        self->stats = PyMem_Calloc(3 * (size_t)num_features, sizeof(double));
    if (self->lock == NULL || self->stats == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->typenum = typenum;
    self->param_typenum = bn_param_typenum(typenum);
    self->dtype = dtype;
    self->min_ndim = min_ndim;
    self->max_ndim = max_ndim;
    self->num_features = num_features;
    self->eps = eps;
    self->momentum = momentum;
    self->affine = affine;
    self->bias = affine && bias;
    self->track_running_stats = track;
    self->relu = relu;
    self->training = 1;
    if (affine && ((self->gamma = filled_vector(self->param_typenum, num_features, 1.0)) == NULL ||
                   (bias && (self->beta = filled_vector(self->param_typenum, num_features, 0.0)) == NULL)))
        goto fail;
    if (track && ((self->running_mean = filled_vector(self->param_typenum, num_features, 0.0)) == NULL ||
                  (self->running_var = filled_vector(self->param_typenum, num_features, 1.0)) == NULL))
        goto fail;
    Py_XDECREF(descr);
    return (PyObject *)self;
fail:
    Py_XDECREF(descr);
    Py_XDECREF(self);
    return NULL;
}

static int BatchNorm_traverse(BatchNormObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->saved_input);
    return 0;
}

static int BatchNorm_clear(BatchNormObject *self)
{
    Py_CLEAR(self->gamma);
    Py_CLEAR(self->beta);
    Py_CLEAR(self->running_mean);
    Py_CLEAR(self->running_var);
    Py_CLEAR(self->grad_gamma);
    Py_CLEAR(self->grad_beta);
    Py_CLEAR(self->saved_input);
    return 0;
}

static void BatchNorm_dealloc(BatchNormObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    BatchNorm_clear(self);
    if (self->lock != NULL)
        PyThread_free_lock(self->lock);
    PyMem_Free(self->stats);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* ---- forward ---- */

static bn_forward_call forward_call(BatchNormObject *self, PyArrayObject *x, PyArrayObject *y)
{
    return (bn_forward_call){
        .dtype = self->dtype,
        .dims = bn_dims_of(x),
        .x = PyArray_DATA(x),
        .y = PyArray_DATA(y),
        .gamma = self->gamma ? PyArray_DATA(self->gamma) : NULL,
        .beta = self->beta ? PyArray_DATA(self->beta) : NULL,
        .eps = self->eps,
        .relu = self->relu,
        .training = self->training,
        .running_mean = self->running_mean ? PyArray_DATA(self->running_mean) : NULL,
        .running_var = self->running_var ? PyArray_DATA(self->running_var) : NULL,
        .momentum = self->momentum,
        .num_batches_tracked = &self->num_batches_tracked,
        .mean = saved_mean(self),
        .var = batch_var(self),
        .invstd = saved_invstd(self),
    };
}

static PyObject *BatchNorm_forward(BatchNormObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "out", NULL};
    PyObject *x_obj, *out_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:forward", kwlist, &x_obj, &out_obj))
        return NULL;
    PyArrayObject *x = bn_input_array(x_obj, self->typenum, "x");
    if (x == NULL)
        return NULL;
    PyArrayObject *y = NULL, *previous_input = NULL;
    if (bn_check_layout(x, self->min_ndim, self->max_ndim, self->num_features) < 0)
        goto done;
    y = bn_output_array(out_obj, x, "out");
    if (y == NULL)
        goto done;
    bn_memory_relation relation = bn_relate_memory(x, y);

    lock_module(self);
    const int batch_stats = bn_uses_batch_stats(self->training, self->running_mean != NULL);
    if (batch_stats && bn_check_batch_size(x) < 0)
        goto unlock;
    if (relation == BN_PARTIAL_OVERLAP || (relation == BN_SAME_MEMORY && self->training)) {
        PyErr_SetString(PyExc_ValueError, relation == BN_PARTIAL_OVERLAP
                        ? "out: must be the input itself or not overlap it"
                        : "out: cannot be the input in training mode, since backward needs the input");
        goto unlock;
    }
    const bn_forward_call call = forward_call(self, x, y);
    bn_status status;
    BN_WITHOUT_GIL(status, bn_run_forward(&call));
    previous_input = self->saved_input;
    if (bn_raise_status(status) < 0) {
        self->saved_input = NULL;
        goto unlock;
    }
    Py_INCREF(x);
    self->saved_input = x;
    self->saved_batch_stats = batch_stats;
    self->saved_input_overwritten = relation == BN_SAME_MEMORY;
    unlock_module(self);
    Py_XDECREF(previous_input);
    Py_DECREF(x);
    return (PyObject *)y;
unlock:
    unlock_module(self);
    Py_XDECREF(previous_input);
done:
    Py_DECREF(x);
    Py_XDECREF(y);
    return NULL;
}

/* ---- backward ---- */

static PyObject *BatchNorm_backward(BatchNormObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "out", NULL};
    PyObject *dy_obj, *out_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:backward", kwlist, &dy_obj, &out_obj))
        return NULL;
    PyArrayObject *dy = NULL, *dx = NULL, *dgamma = NULL, *dbeta = NULL;
    lock_module(self);
    PyArrayObject *x = self->saved_input;
    if (x != NULL && (PyArray_NDIM(x) < self->min_ndim || PyArray_NDIM(x) > self->max_ndim ||
                      PyArray_DIM(x, 1) != self->num_features)) {
        PyErr_SetString(PyExc_RuntimeError, "backward(): the last forward's input was resized since");
        goto fail;
    }
    if (x == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "backward() called before forward(): there is no input to differentiate");
        goto fail;
    }
    if (self->saved_input_overwritten) {
        PyErr_SetString(PyExc_RuntimeError,
                        "backward() needs the last forward's input, which that forward overwrote (out=x)");
        goto fail;
    }
    if ((dy = bn_input_like(dy_obj, x, "dy")) == NULL)
        goto fail;
    dx = bn_output_array(out_obj, x, "out");
    if (dx == NULL)
        goto fail;
    if (bn_relate_memory(dx, x) != BN_DISJOINT || bn_relate_memory(dx, dy) == BN_PARTIAL_OVERLAP) {
        PyErr_SetString(PyExc_ValueError, "out: must not overlap the forward's input; it may be dy itself");
        goto fail;
    }
    if (self->affine) {
        npy_intp c = self->num_features;
        dgamma = (PyArrayObject *)PyArray_EMPTY(1, &c, self->param_typenum, 0);
        if (self->bias)
            dbeta = (PyArrayObject *)PyArray_EMPTY(1, &c, self->param_typenum, 0);
        if (dgamma == NULL || (self->bias && dbeta == NULL))
            goto fail;
    }
    bn_status status;
    BN_WITHOUT_GIL(status, bn_backward(self->dtype, bn_dims_of(x), PyArray_DATA(x), PyArray_DATA(dy),
                                       PyArray_DATA(dx), self->gamma ? PyArray_DATA(self->gamma) : NULL,
                                       self->beta ? PyArray_DATA(self->beta) : NULL, saved_mean(self),
                                       saved_invstd(self), self->saved_batch_stats, self->relu,
                                       dgamma ? PyArray_DATA(dgamma) : NULL, dbeta ? PyArray_DATA(dbeta) : NULL));
    if (bn_raise_status(status) < 0)
        goto fail;
    /* swap in the new gradients; the old ones are released outside the lock */
    PyArrayObject *old_gamma = self->grad_gamma, *old_beta = self->grad_beta;
    self->grad_gamma = dgamma;
    self->grad_beta = dbeta;
    unlock_module(self);
    Py_XDECREF(old_gamma);
    Py_XDECREF(old_beta);
    Py_DECREF(dy);
    return (PyObject *)dx;
fail:
    unlock_module(self);
    Py_XDECREF(dy);
    Py_XDECREF(dx);
    Py_XDECREF(dgamma);
    Py_XDECREF(dbeta);
    return NULL;
}

/* ---- mode ---- */

static PyObject *BatchNorm_train(BatchNormObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mode", NULL};
    int mode = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:train", kwlist, &mode))
        return NULL;
    lock_module(self);
    self->training = mode;
    unlock_module(self);
    return Py_NewRef(self);
}

static PyObject *BatchNorm_eval(BatchNormObject *self, PyObject *Py_UNUSED(ignored))
{
    lock_module(self);
    self->training = 0;
    unlock_module(self);
    return Py_NewRef(self);
}

/* ---- attributes ---- */

/* Offsets of the four per-channel arrays, passed as the getset closure. */
#define ARRAY_SLOT(field) ((void *)offsetof(BatchNormObject, field))

static PyArrayObject **array_slot(BatchNormObject *self, void *closure)
{
    return (PyArrayObject **)((char *)self + (size_t)closure);
}

static PyObject *get_array(BatchNormObject *self, void *closure)
{
    PyArrayObject *arr = *array_slot(self, closure);
    /* a view: the module's own array cannot be resized through it */
    return arr == NULL ? Py_NewRef(Py_None) : PyArray_View(arr, NULL, NULL);
}

static const char *array_name(void *closure)
{
    if (closure == ARRAY_SLOT(gamma))
        return "gamma";
    if (closure == ARRAY_SLOT(beta))
        return "beta";
    return closure == ARRAY_SLOT(running_mean) ? "running_mean" : "running_var";
}

/* Assignment copies the values into the module's own array, so views that users
 * hold of it stay valid and the kernels never see a foreign layout. */
static int set_array(BatchNormObject *self, PyObject *value, void *closure)
{
    const char *name = array_name(closure);
    PyArrayObject *target = *array_slot(self, closure);
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    if (target == NULL) {
        const char *built_with = !self->affine                    ? "affine=False"
                                 : closure == ARRAY_SLOT(beta) ? "bias=False"
                                                               : "track_running_stats=False";
        PyErr_Format(PyExc_AttributeError, "cannot set %s: the module was built with %s", name, built_with);
        return -1;
    }
    PyArrayObject *source;
    if (bn_param_array(value, self->param_typenum, self->num_features, name, 0, &source) < 0)
        return -1;
    if (source == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got None", name);
        return -1;
    }
    lock_module(self);
    int status = PyArray_CopyInto(target, source);
    unlock_module(self);
    Py_DECREF(source);
    return status;
}

static PyObject *get_num_batches_tracked(BatchNormObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->num_batches_tracked);
}

static int set_num_batches_tracked(BatchNormObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete num_batches_tracked");
        return -1;
    }
    if (!PyLong_Check(value) && !PyIndex_Check(value)) {
        PyErr_Format(PyExc_TypeError, "num_batches_tracked: expected an int, got %s", Py_TYPE(value)->tp_name);
        return -1;
    }
    long long n = PyLong_AsLongLong(value);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "num_batches_tracked must be >= 0, got %lld", n);
        return -1;
    }
    lock_module(self);
    self->num_batches_tracked = n;
    unlock_module(self);
    return 0;
}

static PyObject *get_training(BatchNormObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->training);
}

static int set_training(BatchNormObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete training");
        return -1;
    }
    int mode = PyObject_IsTrue(value);
    if (mode < 0)
        return -1;
    lock_module(self);
    self->training = mode;
    unlock_module(self);
    return 0;
}

static PyObject *get_momentum(BatchNormObject *self, void *Py_UNUSED(closure))
{
    return isnan(self->momentum) ? Py_NewRef(Py_None) : PyFloat_FromDouble(self->momentum);
}

static int set_momentum(BatchNormObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    double momentum;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete momentum");
        return -1;
    }
    if (!bn_momentum_converter(value, &momentum))
        return -1;
    lock_module(self);
    self->momentum = momentum;
    unlock_module(self);
    return 0;
}

static PyObject *get_eps(BatchNormObject *self, void *Py_UNUSED(closure)) { return PyFloat_FromDouble(self->eps); }

static int set_eps(BatchNormObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    double eps;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete eps");
        return -1;
    }
    if (!bn_eps_converter(value, &eps))
        return -1;
    lock_module(self);
    self->eps = eps;
    unlock_module(self);
    return 0;
}

static PyObject *get_activation(BatchNormObject *self, void *Py_UNUSED(closure))
{
    return self->relu ? PyUnicode_FromString("relu") : Py_NewRef(Py_None);
}

static PyObject *get_dtype(BatchNormObject *self, void *Py_UNUSED(closure))
{
    return (PyObject *)PyArray_DescrFromType(self->typenum);
}

static PyGetSetDef BatchNorm_getset[] = {
    {"gamma", (getter)get_array, (setter)set_array,
     "Scale per channel (PyTorch's weight), shape (C,); None when affine=False. Modify in place or assign an "
     "array of the module's dtype.", ARRAY_SLOT(gamma)},
    {"beta", (getter)get_array, (setter)set_array,
     "Shift per channel (PyTorch's bias), shape (C,); None when affine=False.", ARRAY_SLOT(beta)},
    {"running_mean", (getter)get_array, (setter)set_array,
     "Running mean per channel; None when track_running_stats=False.", ARRAY_SLOT(running_mean)},
    {"running_var", (getter)get_array, (setter)set_array,
     "Running unbiased variance per channel; None when track_running_stats=False.", ARRAY_SLOT(running_var)},
    {"grad_gamma", (getter)get_array, NULL, "Gradient of gamma from the last backward(); None before it.",
     ARRAY_SLOT(grad_gamma)},
    {"grad_beta", (getter)get_array, NULL, "Gradient of beta from the last backward(); None before it.",
     ARRAY_SLOT(grad_beta)},
    {"num_batches_tracked", (getter)get_num_batches_tracked, (setter)set_num_batches_tracked,
     "Training batches seen (counts only with track_running_stats=True).", NULL},
    {"training", (getter)get_training, (setter)set_training, "True in training mode.", NULL},
    {"weight", (getter)get_array, (setter)set_array, "PyTorch's name for gamma (the same array).",
     ARRAY_SLOT(gamma)},
    {"bias", (getter)get_array, (setter)set_array,
     "PyTorch's name for beta (the same array); None when affine=False or bias=False.", ARRAY_SLOT(beta)},
    {"eps", (getter)get_eps, (setter)set_eps, "Added to the variance before the square root.", NULL},
    {"momentum", (getter)get_momentum, (setter)set_momentum,
     "Weight of the new batch in the running statistics; None means a cumulative average.", NULL},
    {"dtype", (getter)get_dtype, NULL,
     "dtype of inputs and outputs; also of parameters and buffers, which are float32 for float16.", NULL},
    {"activation", (getter)get_activation, NULL, "None, or 'relu' for max(0, .) fused into the output.", NULL},
    {NULL},
};

static PyMemberDef BatchNorm_members[] = {
    {"num_features", T_PYSSIZET, offsetof(BatchNormObject, num_features), READONLY, "Number of channels C."},
    {"affine", T_BOOL, offsetof(BatchNormObject, affine), READONLY, "Whether gamma and beta exist."},
    {"track_running_stats", T_BOOL, offsetof(BatchNormObject, track_running_stats), READONLY,
     "Whether running statistics are kept and used in eval mode."},
    {NULL},
};


/* ---- atomic state (for state_dict / load_state_dict) ---- */

/* (gamma, beta, running_mean, running_var, num_batches_tracked): copies taken under
 * the module's lock, so they all come from the same moment (None where absent). */
static PyObject *BatchNorm_get_state(BatchNormObject *self, PyObject *Py_UNUSED(ignored))
{
    PyArrayObject *arrays[4] = {self->gamma, self->beta, self->running_mean, self->running_var};
    PyObject *copies[4] = {NULL, NULL, NULL, NULL};
    lock_module(self);
    long long count = self->num_batches_tracked;
    int failed = 0;
    for (int i = 0; i < 4 && !failed; i++) {
        copies[i] = arrays[i] == NULL ? Py_NewRef(Py_None) : PyArray_NewCopy(arrays[i], NPY_CORDER);
        failed = copies[i] == NULL;
    }
    unlock_module(self);
    PyObject *result = failed ? NULL : Py_BuildValue("(OOOOL)", copies[0], copies[1], copies[2], copies[3], count);
    for (int i = 0; i < 4; i++)
        Py_XDECREF(copies[i]);
    return result;
}

/* _set_state(gamma, beta, running_mean, running_var, num_batches_tracked): each an
 * array of the parameter dtype and shape (C,), or None to leave it; all assigned
 * under the module's lock, after all were checked. */
static PyObject *BatchNorm_set_state(BatchNormObject *self, PyObject *args)
{
    PyObject *values[4], *count_obj;
    if (!PyArg_ParseTuple(args, "OOOOO:_set_state", &values[0], &values[1], &values[2], &values[3], &count_obj))
        return NULL;
    PyArrayObject *targets[4] = {self->gamma, self->beta, self->running_mean, self->running_var};
    static const char *names[4] = {"gamma", "beta", "running_mean", "running_var"};
    PyArrayObject *sources[4] = {NULL, NULL, NULL, NULL};
    long long count = -1;
    PyObject *result = NULL;
    if (count_obj != Py_None) {
        count = PyLong_AsLongLong(count_obj);
        if (count == -1 && PyErr_Occurred())
            return NULL;
        if (count < 0) {
            PyErr_Format(PyExc_ValueError, "num_batches_tracked must be >= 0, got %lld", count);
            return NULL;
        }
    }
    for (int i = 0; i < 4; i++) {
        if (values[i] == Py_None)
            continue;
        if (targets[i] == NULL) {
            PyErr_Format(PyExc_AttributeError, "cannot set %s on this module", names[i]);
            goto done;
        }
        if (bn_param_array(values[i], self->param_typenum, self->num_features, names[i], 0, &sources[i]) < 0)
            goto done;
    }
    lock_module(self);
    int status = 0;
    for (int i = 0; i < 4 && status == 0; i++)
        if (sources[i] != NULL)
            status = PyArray_CopyInto(targets[i], sources[i]);
    if (status == 0 && count >= 0)
        self->num_batches_tracked = count;
    unlock_module(self);
    if (status == 0)
        result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(sources[i]);
    return result;
}

static PyMethodDef BatchNorm_methods[] = {
    {"_get_state", (PyCFunction)BatchNorm_get_state, METH_NOARGS, "Copies of the state, taken atomically."},
    {"_set_state", (PyCFunction)BatchNorm_set_state, METH_VARARGS, "Assign the state atomically."},
    {"forward", (PyCFunction)(void (*)(void))BatchNorm_forward, METH_VARARGS | METH_KEYWORDS,
     "forward($self, x, /, out=None)\n--\n\n"
     "Normalise x of shape (N, C, *spatial) and return y (a new array, or `out`).\n\n"
     "In training mode (or with track_running_stats=False) uses the batch's statistics and, when tracking,\n"
     "updates running_mean, running_var and num_batches_tracked; in eval mode uses the running statistics.\n"
     "The module keeps a reference to x for backward(): changing x in place before backward() changes\n"
     "the gradient. y has x's memory layout: channels-last (axis 1 varying fastest) when x is, else\n"
     "C-contiguous (other strided inputs are first copied to C order). `out` must have x's shape, dtype and\n"
     "that layout; in eval mode it may be x itself."},
    {"backward", (PyCFunction)(void (*)(void))BatchNorm_backward, METH_VARARGS | METH_KEYWORDS,
     "backward($self, dy, /, out=None)\n--\n\n"
     "Gradient of the loss w.r.t. the last forward's input, given dy (the gradient w.r.t. its output).\n\n"
     "dx (a new array, or `out`) has the layout of the forward's input, as y does.\n"
     "Sets grad_gamma and grad_beta. After a forward with batch statistics the gradient flows through the\n"
     "mean and variance; after an eval-mode forward the running statistics are constants, as in PyTorch."},
    {"train", (PyCFunction)(void (*)(void))BatchNorm_train, METH_VARARGS | METH_KEYWORDS,
     "train($self, /, mode=True)\n--\n\nSet training mode (or eval mode with mode=False); returns the module."},
    {"eval", (PyCFunction)BatchNorm_eval, METH_NOARGS,
     "eval($self, /)\n--\n\nSet eval mode (use the running statistics); returns the module."},
    {NULL},
};

static PyType_Slot BatchNorm_slots[] = {
    /* The signature line gives inspect.signature(bnorm.BatchNorm2d) (found through the MRO).
       dtype=None means float32. */
    {Py_tp_doc, "_BatchNorm(num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, "
                "dtype=None, activation=None, *, bias=True)\n--\n\n"
                "Batch normalisation over the channel axis of (N, C, *spatial) arrays, with PyTorch's semantics.\n\n"
                "Use the subclasses bnorm.BatchNorm1d, bnorm.BatchNorm2d and bnorm.BatchNorm3d."},
    {Py_tp_new, BatchNorm_new},
    {Py_tp_dealloc, BatchNorm_dealloc},
    {Py_tp_traverse, BatchNorm_traverse},
    {Py_tp_clear, BatchNorm_clear},
    {Py_tp_call, BatchNorm_forward},
    {Py_tp_methods, BatchNorm_methods},
    {Py_tp_members, BatchNorm_members},
    {Py_tp_getset, BatchNorm_getset},
    {0, NULL},
};

/* bn(x) runs the tp_call slot, BatchNorm_forward, directly. CPython describes that slot by a
 * generated `__call__` wrapper descriptor whose text signature is "($self, /, *args, **kwargs)",
 * which is what inspect.signature(bn.__call__) and Jupyter's `bn?` showed. This replaces it by a
 * copy that differs only in its docstring, which carries forward's signature. It is still a
 * wrapper descriptor of the same slot and function, so CPython keeps tp_call = BatchNorm_forward
 * for this type and every subclass: a __call__ written in Python, or a METH_COEXIST method, would
 * make the Python subclasses (BatchNorm1d/2d/3d) look __call__ up and dispatch to it on every call.
 * The copy must outlive the type: static storage (its contents are the same for every module). */
static struct wrapperbase call_wrapper;

int bn_give_call_a_signature(PyTypeObject *type)
{
    PyObject *generated = PyDict_GetItemString(type->tp_dict, "__call__"); /* borrowed */
    if (generated == NULL || !Py_IS_TYPE(generated, &PyWrapperDescr_Type)) {
        PyErr_SetString(PyExc_SystemError, "bnorm: _BatchNorm.__call__ is not the tp_call slot wrapper");
        return -1;
    }
    PyWrapperDescrObject *slot = (PyWrapperDescrObject *)generated;
    call_wrapper = *slot->d_base;
    call_wrapper.doc = "__call__($self, x, /, out=None)\n--\n\nSame as forward(x, out=out).";
    PyObject *descr = PyDescr_NewWrapper(type, &call_wrapper, slot->d_wrapped);
    if (descr == NULL)
        return -1;
    int status = PyObject_SetAttrString((PyObject *)type, "__call__", descr);
    Py_DECREF(descr);
    return status;
}

PyType_Spec bn_batchnorm_spec = {
    .name = "bnorm._core._BatchNorm",
    .basicsize = sizeof(BatchNormObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = BatchNorm_slots,
};
