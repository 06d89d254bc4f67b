/* The C side of libdfd_runtime.so: the functions dfd_runtime.h declares, each taking the
 * embedded interpreter's lock and calling its dfd_py_* counterpart in dfd.runtime.capi.
 * Compiled by `dfd-export capi` (export/capi_build.py) through cffi's embedding, which supplies
 * those extern "Python" functions and the DFD_* macros: not a translation unit of its own. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "dfd_runtime.h"

static dfd_status dfd_py_open(const char *, const char *, dfd_detector **, char *, size_t);
static dfd_status dfd_py_detect(dfd_detector *, const dfd_image *, const dfd_face *, int32_t, dfd_result *, char *, size_t);
static dfd_status dfd_py_detect_file(dfd_detector *, const char *, const dfd_face *, dfd_result *, char *, size_t);
static dfd_status dfd_py_detect_encoded(dfd_detector *, const void *, size_t, const dfd_face *, dfd_result *, char *, size_t);
static dfd_status dfd_py_close(dfd_detector *, char *, size_t);
static dfd_status dfd_py_open_with(const char *, const dfd_options *, dfd_detector **, char *, size_t);
static dfd_status dfd_py_describe(dfd_detector *, char *, size_t, char *, size_t);

static __thread char dfd_error[DFD_ERROR_CAPACITY];
static pthread_once_t dfd_python_once = PTHREAD_ONCE_INIT;
static int dfd_python_started;                       /* written once, under dfd_python_once */
static pid_t dfd_python_pid;                         /* the process it started in, likewise */
static char dfd_python_failure[DFD_ERROR_CAPACITY];
static volatile int dfd_runtime_ready;               /* set by the init code once bound */
static char dfd_runtime_failure[DFD_ERROR_CAPACITY];

static void dfd_startup_succeeded(void) { dfd_runtime_ready = 1; }

static void dfd_startup_failed(const char *message)
{
    snprintf(dfd_runtime_failure, sizeof dfd_runtime_failure, "%s", message);
}

static void dfd_start_python(void)
{
    PyStatus status;
    PyPreConfig preconfig;
    PyConfig config;
    dfd_python_pid = getpid();
    if (Py_IsInitialized()) {            /* loaded into a running interpreter: use it */
        dfd_python_started = 1;
        return;
    }
    /* UTF-8 mode: paths and messages are UTF-8 whatever the C program's locale (one that never
       called setlocale runs in "C", where Python would take every non-ASCII byte of a path as an
       undecodable one); other bytes still round-trip as surrogate escapes */
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status)) {
        snprintf(dfd_python_failure, sizeof dfd_python_failure, "cannot start the embedded Python of %s: %s",
                 DFD_PYTHON_EXECUTABLE, status.err_msg ? status.err_msg : "unknown error");
        return;
    }
    PyConfig_InitIsolatedConfig(&config);
    status = PyConfig_SetBytesString(&config, &config.executable, DFD_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.program_name, DFD_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        snprintf(dfd_python_failure, sizeof dfd_python_failure,
                 "cannot start the embedded Python of %s: %s (rebuild the library with "
                 "`dfd-export capi` if that environment moved)",
                 DFD_PYTHON_EXECUTABLE, status.err_msg ? status.err_msg : "unknown error");
        return;
    }
    PyEval_SaveThread();                 /* cffi takes the GIL per call */
    dfd_python_started = 1;
}

static void dfd_set_error(const char *message)
{
    snprintf(dfd_error, sizeof dfd_error, "%s", message);
}

#define DFD_FORKED "this process is a fork() of the one that started the runtime: the threads of its embedded " \
    "Python and ONNX Runtime did not survive the fork, so no dfd_* call can run here (it would hang or crash); " \
    "open detectors in each worker after forking, before any dfd_open in the parent, and end a child of a " \
    "process with detectors with _exit() or exec()"

/* Clear the thread's error and make sure the interpreter runs, in this process: DFD_OK, or why
   no call can run (the thread's error says it). */
static dfd_status dfd_begin(void)
{
    dfd_error[0] = '\0';
    pthread_once(&dfd_python_once, dfd_start_python);
    if (!dfd_python_started) {
        dfd_set_error(dfd_python_failure);
        return DFD_E_INTERNAL;
    }
    if (getpid() != dfd_python_pid) {    /* a fork() child has the memory of those threads, not them */
        dfd_set_error(DFD_FORKED);
        return DFD_E_INVALID_ARGUMENT;
    }
    return DFD_OK;
}

/* After an extern "Python" call: did the runtime's Python code actually serve it? */
static dfd_status dfd_finish(dfd_status status)
{
    if (dfd_runtime_ready)
        return status;
    dfd_set_error(dfd_runtime_failure[0] ? dfd_runtime_failure
                  : "the embedded Python runtime failed to start (its traceback is on stderr)");
    return DFD_E_INTERNAL;
}

/* Results of a call that the Python side could not serve: failed, with the thread's error. */
static void dfd_mark_results(dfd_result *results, int32_t count, dfd_status status)
{
    int32_t i;
    if (results == NULL)
        return;
    for (i = 0; i < count; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].score = NAN;
        results[i].stream_prob[0] = results[i].stream_prob[1] = results[i].stream_prob[2] = NAN;
        results[i].status = status;
        snprintf(results[i].message, sizeof results[i].message, "%s", dfd_error);
    }
}

const char *dfd_version(void) { return DFD_VERSION; }

const char *dfd_last_error(void) { return dfd_error; }

#define DFD_REBUILD_ADVICE "rebuild it against the dfd_runtime.h that `dfd-export capi` wrote beside this library"

/* Was the caller compiled against this build's header? Sets the thread's error when not. */
static int dfd_abi_matches(uint32_t abi)
{
    if (abi == DFD_ABI_VERSION)
        return 1;
    snprintf(dfd_error, sizeof dfd_error, "this program was compiled against the dfd_runtime.h of another build "
             "(ABI %lu; this library's is %lu): " DFD_REBUILD_ADVICE,
             (unsigned long)abi, (unsigned long)DFD_ABI_VERSION);
    return 0;
}

/* What both ways of opening do before the runtime is asked: no handle until one is made, the
 * caller's header checked, the interpreter started. */
static dfd_status dfd_open_begin(dfd_detector **out, uint32_t abi)
{
    if (out != NULL)
        *out = NULL;
    dfd_error[0] = '\0';
    if (!dfd_abi_matches(abi))
        return DFD_E_INVALID_ARGUMENT;
    return dfd_begin();
}

dfd_status dfd_open_abi(const char *engine_dir, const char *backend, dfd_detector **out, uint32_t abi)
{
    dfd_status began = dfd_open_begin(out, abi);
    if (began != DFD_OK)
        return began;
    return dfd_finish(dfd_py_open(engine_dir, backend, out, dfd_error, sizeof dfd_error));
}

void dfd_options_init_sized(dfd_options *options, size_t struct_size)
{
    dfd_error[0] = '\0';
    if (options == NULL)
        return;
    if (struct_size != sizeof *options) {   /* another header's layout: writing ours would overrun it */
        snprintf(dfd_error, sizeof dfd_error, "dfd_options_init: the program's dfd_options has %lu bytes, this "
                 "library's %lu; the struct was left untouched: " DFD_REBUILD_ADVICE,
                 (unsigned long)struct_size, (unsigned long)sizeof *options);
        return;
    }
    memset(options, 0, sizeof *options);
    options->struct_size = (uint32_t)sizeof *options;
    options->backend = NULL;
    options->batch_size = DFD_DEFAULT_BATCH_SIZE;
    options->face_detection = 1;
    options->face_min_px = DFD_DEFAULT_FACE_MIN_PX;
    options->gpu_preprocessing = 1;
    options->cuda_graph_batch = 0;
    options->face_cascade = 1;
    options->max_pixels = DFD_DEFAULT_MAX_PIXELS;
}

dfd_status dfd_open_with_abi(const char *engine_dir, const dfd_options *options, dfd_detector **out, uint32_t abi)
{
    dfd_status began = dfd_open_begin(out, abi);
    if (began != DFD_OK)
        return began;
    return dfd_finish(dfd_py_open_with(engine_dir, options, out, dfd_error, sizeof dfd_error));
}

/* The entry points of headers that passed no ABI version: a program compiled against one is
   refused when it opens, and its options are left untouched, instead of the library reading
   and writing structs whose layout it cannot know. */
#undef dfd_open
#undef dfd_open_with
#undef dfd_options_init
#define DFD_UNVERSIONED "this program was compiled against a dfd_runtime.h without DFD_ABI_VERSION: " DFD_REBUILD_ADVICE

dfd_status dfd_open(const char *engine_dir, const char *backend, dfd_detector **out);
dfd_status dfd_open_with(const char *engine_dir, const void *options, dfd_detector **out);
void dfd_options_init(void *options);

static dfd_status dfd_refuse_unversioned(dfd_detector **out)
{
    if (out != NULL)
        *out = NULL;
    dfd_set_error(DFD_UNVERSIONED);
    return DFD_E_INVALID_ARGUMENT;
}

dfd_status dfd_open(const char *engine_dir, const char *backend, dfd_detector **out)
{
    (void)engine_dir;
    (void)backend;
    return dfd_refuse_unversioned(out);
}

dfd_status dfd_open_with(const char *engine_dir, const void *options, dfd_detector **out)
{
    (void)engine_dir;
    (void)options;
    return dfd_refuse_unversioned(out);
}

void dfd_options_init(void *options)
{
    (void)options;
    dfd_set_error(DFD_UNVERSIONED);
}

dfd_status dfd_describe(dfd_detector *d, char *buffer, size_t size)
{
    dfd_status began;
    if (buffer != NULL && size > 0)
        buffer[0] = '\0';
    if ((began = dfd_begin()) != DFD_OK)
        return began;
    return dfd_finish(dfd_py_describe(d, buffer, size, dfd_error, sizeof dfd_error));
}

dfd_status dfd_detect_faces(dfd_detector *d, const dfd_image *images, const dfd_face *faces, int32_t count,
                            dfd_result *results)
{
    dfd_status status;
    if ((status = dfd_begin()) != DFD_OK) {
        dfd_mark_results(results, count, status);
        return status;
    }
    status = dfd_finish(dfd_py_detect(d, images, faces, count, results, dfd_error, sizeof dfd_error));
    if (!dfd_runtime_ready)
        dfd_mark_results(results, count, status);
    return status;
}

dfd_status dfd_detect(dfd_detector *d, const dfd_image *images, int32_t count, dfd_result *results)
{
    return dfd_detect_faces(d, images, NULL, count, results);
}

dfd_status dfd_detect_file_face(dfd_detector *d, const char *path, const dfd_face *face, dfd_result *result)
{
    dfd_status status;
    if ((status = dfd_begin()) != DFD_OK) {
        dfd_mark_results(result, 1, status);
        return status;
    }
    status = dfd_finish(dfd_py_detect_file(d, path, face, result, dfd_error, sizeof dfd_error));
    if (!dfd_runtime_ready)
        dfd_mark_results(result, 1, status);
    return status;
}

dfd_status dfd_detect_file(dfd_detector *d, const char *path, dfd_result *result)
{
    return dfd_detect_file_face(d, path, NULL, result);
}

dfd_status dfd_detect_encoded(dfd_detector *d, const void *data, size_t size, const dfd_face *face,
                              dfd_result *result)
{
    dfd_status status;
    if ((status = dfd_begin()) != DFD_OK) {
        dfd_mark_results(result, 1, status);
        return status;
    }
    status = dfd_finish(dfd_py_detect_encoded(d, data, size, face, result, dfd_error, sizeof dfd_error));
    if (!dfd_runtime_ready)
        dfd_mark_results(result, 1, status);
    return status;
}

void dfd_close(dfd_detector *d)
{
    dfd_error[0] = '\0';
    if (d == NULL)
        return;
    if (!dfd_python_started) {           /* nothing was ever opened in this process */
        dfd_set_error("dfd_close: not a detector that dfd_open returned");
        return;
    }
    if (dfd_begin() == DFD_OK)
        dfd_finish(dfd_py_close(d, dfd_error, sizeof dfd_error));
}
