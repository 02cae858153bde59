/* A Maildir commit's renames and unlinks, compiled: popbox.store.maildir_apply's loop.
 *
 * apply(new_fd, cur_fd, ops) carries out every operation of one commit in a single call.
 * An operation is (in_cur, name, target): the file `name` in new/ (in_cur false) or cur/
 * (true) is unlinked when `target` is None, else renamed to `target` in cur/ with
 * renameat2(2)'s RENAME_NOREPLACE, so that another file of that name is never replaced
 * and no separate look-up (lstat) is needed before the rename. The names are encoded
 * with the GIL held; the system calls then run with it released.
 *
 * The result is a list with one int per operation: 0, or the errno it failed with (an
 * operation with a name that cannot be encoded, or holds a NUL, gets EINVAL without a
 * system call). EINVAL or ENOSYS from renameat2 (a file system or a kernel without
 * RENAME_NOREPLACE) is left to the caller, which does that one in Python.
 */

#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

typedef struct {
    int in_cur;
    const char *name;
    const char *target; /* NULL: unlink */
    int error;
} op;

static int
rename_noreplace(int from_fd, const char *from, int to_fd, const char *to)
{
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, from_fd, from, to_fd, to, RENAME_NOREPLACE);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static int
as_fd(PyObject *obj, int *out)
{
    long fd = PyLong_AsLong(obj);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "apply() wants directory descriptors");
        return -1;
    }
    *out = (int)fd;
    return 0;
}

/* The encoded bytes of a str (a new reference in *keep), or NULL in *raw when it cannot
 * be a file name; -1 on a real error (not a str). */
static int
encode_name(PyObject *name, PyObject **keep, const char **raw)
{
    PyObject *bytes;
    *keep = NULL;
    *raw = NULL;
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "apply() wants names as str");
        return -1;
    }
    bytes = PyUnicode_EncodeFSDefault(name);
    if (bytes == NULL) {
        PyErr_Clear();
        return 0;
    }
    *keep = bytes;
    if (strlen(PyBytes_AS_STRING(bytes)) == (size_t)PyBytes_GET_SIZE(bytes))
        *raw = PyBytes_AS_STRING(bytes);
    return 0;
}

static PyObject *
apply(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ops, *keep = NULL, *result = NULL;
    op *todo = NULL;
    Py_ssize_t count, i;
    int new_fd, cur_fd;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "apply() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_fd(args[0], &new_fd) < 0 || as_fd(args[1], &cur_fd) < 0)
        return NULL;
    ops = args[2];
    if (!PyList_CheckExact(ops)) {
        PyErr_SetString(PyExc_TypeError, "apply() wants a list of operations");
        return NULL;
    }
    count = PyList_GET_SIZE(ops);
    keep = PyList_New(0); /* the encoded names, alive until the calls are done */
    todo = PyMem_Calloc((size_t)count + 1, sizeof(op));
    if (keep == NULL || todo == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(ops, i), *bytes;
        int in_cur, bad = 0;
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "an operation is (in_cur, name, target)");
            goto done;
        }
        in_cur = PyObject_IsTrue(PyTuple_GET_ITEM(item, 0));
        if (in_cur < 0)
            goto done;
        todo[i].in_cur = in_cur;
        if (encode_name(PyTuple_GET_ITEM(item, 1), &bytes, &todo[i].name) < 0)
            goto done;
        if (bytes != NULL) {
            int appended = PyList_Append(keep, bytes);
            Py_DECREF(bytes);
            if (appended < 0)
                goto done;
        }
        bad = todo[i].name == NULL;
        if (PyTuple_GET_ITEM(item, 2) != Py_None) {
            if (encode_name(PyTuple_GET_ITEM(item, 2), &bytes, &todo[i].target) < 0)
                goto done;
            if (bytes != NULL) {
                int appended = PyList_Append(keep, bytes);
                Py_DECREF(bytes);
                if (appended < 0)
                    goto done;
            }
            bad = bad || todo[i].target == NULL;
        }
        if (bad) {
            todo[i].error = EINVAL;
            todo[i].name = NULL; /* not carried out */
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < count; i++) {
        op *o = &todo[i];
        int from = o->in_cur ? cur_fd : new_fd, rc;
        if (o->name == NULL)
            continue;
        do {
            rc = o->target == NULL ? unlinkat(from, o->name, 0)
                                   : rename_noreplace(from, o->name, cur_fd, o->target);
        } while (rc != 0 && errno == EINTR);
        o->error = rc == 0 ? 0 : errno;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (i = 0; i < count; i++) {
        PyObject *code = PyLong_FromLong(todo[i].error);
        if (code == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, code);
    }
done:
    Py_XDECREF(keep);
    PyMem_Free(todo);
    return result;
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))apply, METH_FASTCALL,
     "apply(new_fd, cur_fd, ops, /): [errno or 0] for each (in_cur, name, target)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "popbox.store._apply",
    "A Maildir commit's renames and unlinks, compiled (popbox.store.maildir_apply).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__apply(void)
{
    return PyModule_Create(&module);
}
