/*
 * bnorm._core: module definition (multi-phase initialisation), the configuration
 * functions (threads, SIMD level), and registration of the module type and the
 * functional layer.
 */
#define BN_MODULE_MAIN
#include "alloc.h"
#include "binding.h"

#include <stdlib.h>

#include "dispatch.h"
#include "pool.h"

typedef struct {
    PyTypeObject *batchnorm_type;
} bn_module_state;

static bn_module_state *module_state(PyObject *module) { return PyModule_GetState(module); }

/* ---- configuration ---- */

static PyObject *set_num_threads(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: expected an integer in [1, 1024], got %ld", n);
        return NULL;
    }
    int status;
    /* waits for a running job to finish, which needs no GIL */
    BN_WITHOUT_GIL(status, bn_pool_set_threads((int)n));
    if (status != 0) {
        PyErr_Format(PyExc_RuntimeError, "set_num_threads: could not start %ld threads; using 1", n);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(bn_pool_get_threads());
}

static PyObject *simd_level(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(bn_simd_name(bn_simd_selected()));
}

static PyObject *supported_simd_levels(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    const bn_simd best = bn_simd_best_supported();
    PyObject *levels = PyTuple_New(best + 1);
    for (int i = 0; levels != NULL && i <= (int)best; i++) {
        PyObject *name = PyUnicode_FromString(bn_simd_name((bn_simd)i));
        if (name == NULL) {
            Py_CLEAR(levels);
            break;
        }
        PyTuple_SET_ITEM(levels, i, name);
    }
    return levels;
}

/* Selects a level by name; returns -1 with ValueError if unknown or unsupported. */
static int select_simd(const char *name, const char *origin)
{
    const int level = bn_simd_parse(name);
    const bn_simd best = bn_simd_best_supported();
    if (level < 0) {
        PyErr_Format(PyExc_ValueError, "%s: unknown SIMD level %s; expected one of %s, %s, %s", origin, name,
                     bn_simd_name(BN_SIMD_BASELINE), bn_simd_name(BN_SIMD_AVX2), bn_simd_name(BN_SIMD_AVX512));
        return -1;
    }
    if (level > (int)best) {
        PyErr_Format(PyExc_ValueError, "%s: this CPU does not support the %s level (best supported: %s)", origin,
                     name, bn_simd_name(best));
        return -1;
    }
    bn_simd_select((bn_simd)level);
    return 0;
}

static PyObject *select_simd_level(PyObject *Py_UNUSED(module), PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL || select_simd(name, "_select_simd_level") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef config_methods[] = {
    {"set_num_threads", set_num_threads, METH_O,
     "set_num_threads(n, /)\n--\n\nUse up to n threads (the caller included) in each kernel call."},
    {"get_num_threads", get_num_threads, METH_NOARGS,
     "get_num_threads()\n--\n\nThe number of threads a kernel call may use."},
    {"simd_level", simd_level, METH_NOARGS,
     "simd_level()\n--\n\nThe SIMD (instruction-set) level of the kernels in use: baseline, avx2 or avx512."},
    {"supported_simd_levels", supported_simd_levels, METH_NOARGS,
     "supported_simd_levels()\n--\n\nThe SIMD levels this CPU supports, lowest first."},
    /* the names of bnorm 0.1, kept working */
    {"simd_path", simd_level, METH_NOARGS, "simd_path()\n--\n\nThe earlier name of simd_level()."},
    {"supported_simd_paths", supported_simd_levels, METH_NOARGS,
     "supported_simd_paths()\n--\n\nThe earlier name of supported_simd_levels()."},
    {"_select_simd_level", select_simd_level, METH_O,
     "_select_simd_level(name, /)\n--\n\nSwitch the kernels' SIMD level (for tests)."},
    {NULL},
};

/* ---- initialisation ---- */

/* BNORM_SIMD forces a level; an unusable value warns and keeps the best one. */
static int init_simd(void)
{
    bn_simd_select(bn_simd_best_supported());
    const char *forced = getenv("BNORM_SIMD");
    if (forced == NULL || forced[0] == '\0')
        return 0;
    if (select_simd(forced, "BNORM_SIMD") == 0)
        return 0;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int status = PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "%S; using %s", value,
                                  bn_simd_name(bn_simd_selected()));
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return status;
}

/* BNORM_NUM_THREADS, else the CPUs this process may run on. */
static int init_threads(void)
{
    int n = bn_pool_available_cpus();
    const char *env = getenv("BNORM_NUM_THREADS");
    if (env != NULL && env[0] != '\0') {
        char *end;
        long requested = strtol(env, &end, 10);
        if (*end == '\0' && requested >= 1 && requested <= 1024)
            n = (int)requested;
        else if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                                  "BNORM_NUM_THREADS=%s is not an integer in [1, 1024]; using %d", env, n) < 0)
            return -1;
    }
    if (bn_pool_set_threads(n) != 0)
        return PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "could not start %d threads; using 1", n);
    return 0;
}

static int module_exec(PyObject *module)
{
    if (PyArray_ImportNumPyAPI() < 0 || bn_init_dtypes() < 0)
        return -1;
    /* the dtype names this build takes, in the order of the dtype table */
    PyObject *dtypes = bn_dtype_names();
    const int added = dtypes == NULL ? -1 : PyModule_AddObjectRef(module, "DTYPES", dtypes);
    Py_XDECREF(dtypes);
    if (added < 0)
        return -1;
    bn_module_state *state = module_state(module);
    state->batchnorm_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &bn_batchnorm_spec, NULL);
    if (state->batchnorm_type == NULL || bn_give_call_a_signature(state->batchnorm_type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "_BatchNorm", (PyObject *)state->batchnorm_type) < 0)
        return -1;
    if (PyModule_AddFunctions(module, bn_functional_methods) < 0 ||
        PyModule_AddFunctions(module, bn_phase_methods) < 0)
        return -1;
    if (bn_alloc_init(module) < 0)
        return -1;
    bn_batchnorm_init_fork();
    if (init_simd() < 0 || init_threads() < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    Py_VISIT(module_state(module)->batchnorm_type);
    return 0;
}

static int module_clear(PyObject *module)
{
    Py_CLEAR(module_state(module)->batchnorm_type);
    return 0;
}

static void module_free(void *module) { module_clear(module); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bnorm._core",
    .m_doc = "C core of bnorm: the batch-norm module type, the functional layer and the kernel configuration.",
    .m_size = sizeof(bn_module_state),
    .m_methods = config_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&module_def); }
