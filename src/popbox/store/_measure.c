/* The Maildir size pass, compiled: popbox.store.maildir_measure's inner loop, and the
 * whole read of one small message file (read_small, at the end).
 *
 * sizes(dir_fd, names, buffer_size) measures every named file of one directory in a
 * single call: for each name, openat(2) (O_NOFOLLOW, O_NONBLOCK: never through a
 * symlink, never waiting on a FIFO), fstat(2) (regular files only), read(2) to the end
 * in buffer_size pieces, close(2). A read that comes back short once the size fstat gave
 * is reached is taken as the end (a Maildir message file is never appended to), which
 * saves the read(2) that would return 0. The names are encoded first, with the GIL held; the
 * system calls and the counting then run with the GIL released, so that two threads
 * can measure two halves of a maildir at once.
 *
 * The wire size is the one popbox.proto.wire.SizeCounter gives (RFC 1939 §11: sizes
 * count CRLF line ends): the file's length, plus one for every "\n" not preceded by a
 * "\r", plus two when a non-empty file does not end with "\n". A "\r" that ends one
 * piece and a "\n" that starts the next are one CRLF (the previous byte is carried).
 *
 * The result is a list with, for each name, (physical size, wire size), or None when
 * the file could not be measured (gone, unreadable, not a regular file, or a name that
 * cannot be encoded): the caller measures those again in Python to learn why.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_FLAGS (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)

typedef struct {
    long long physical; /* -1: not measured */
    long long wire;
} measured;

/* Counts the "\n" of buf[0:n] that no "\r" precedes; `prev` is the byte before buf[0]. */
static long long
bare_lfs(const char *buf, size_t n, char prev)
{
    long long count = 0;
    const char *p = buf, *end = buf + n;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        char before = p == buf ? prev : p[-1];
        if (before != '\r')
            count++;
        p++;
    }
    return count;
}

static void
measure_one(int dir_fd, const char *name, char *buf, size_t size, measured *out)
{
    struct stat st;
    long long physical = 0, extra = 0;
    char prev = '\n';
    ssize_t got;
    int fd;

    out->physical = -1;
    out->wire = -1;
    do {
        fd = openat(dir_fd, name, READ_FLAGS);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return;
    }
    for (;;) {
        got = read(fd, buf, size);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            return;
        }
        if (got == 0)
            break;
        extra += bare_lfs(buf, (size_t)got, prev);
        prev = buf[got - 1];
        physical += got;
        if ((size_t)got < size && physical >= (long long)st.st_size)
            break; /* a short read at the size fstat gave: the end, without one more read */
    }
    close(fd);
    if (physical > 0 && prev != '\n')
        extra += 2;
    out->physical = physical;
    out->wire = physical + extra;
}

/* Shrinks the bytes object `out` to `used` octets (it was allocated larger). */
static PyObject *
finish(PyObject *out, Py_ssize_t used)
{
    if (used != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, used) < 0)
        return NULL; /* _PyBytes_Resize released `out` */
    return out;
}

static PyObject *
sizes(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *names, *encoded = NULL, *result = NULL;
    measured *found = NULL;
    char *buf = NULL;
    const char **raw = NULL;
    Py_ssize_t count, i, buffer_size;
    int dir_fd;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "sizes() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    {
        long fd = PyLong_AsLong(args[0]);
        if (fd == -1 && PyErr_Occurred())
            return NULL;
        if (fd < 0 || fd > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "sizes() wants a directory descriptor");
            return NULL;
        }
        dir_fd = (int)fd;
    }
    names = args[1];
    if (!PyList_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "sizes() wants a list of names");
        return NULL;
    }
    buffer_size = PyLong_AsSsize_t(args[2]);
    if (buffer_size == -1 && PyErr_Occurred())
        return NULL;
    if (buffer_size < 1 || buffer_size > (1 << 26)) {
        PyErr_SetString(PyExc_ValueError, "buffer_size must be between 1 and 64 MiB");
        return NULL;
    }
    count = PyList_GET_SIZE(names);
    encoded = PyList_New(count);
    found = PyMem_Calloc((size_t)count + 1, sizeof(measured));
    raw = PyMem_Calloc((size_t)count + 1, sizeof(char *));
    buf = PyMem_Malloc((size_t)buffer_size);
    if (encoded == NULL || found == NULL || raw == NULL || buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < count; i++) {
        PyObject *name = PyList_GET_ITEM(names, i), *bytes;
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "sizes() wants a list of str");
            goto done;
        }
        bytes = PyUnicode_EncodeFSDefault(name);
        if (bytes == NULL) { /* not encodable: left to the Python measure */
            PyErr_Clear();
            Py_INCREF(Py_None);
            PyList_SET_ITEM(encoded, i, Py_None);
            continue;
        }
        PyList_SET_ITEM(encoded, i, bytes);
        raw[i] = strlen(PyBytes_AS_STRING(bytes)) == (size_t)PyBytes_GET_SIZE(bytes)
                     ? PyBytes_AS_STRING(bytes)
                     : NULL; /* an embedded NUL: left to the Python measure */
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < count; i++) {
        if (raw[i] != NULL)
            measure_one(dir_fd, raw[i], buf, (size_t)buffer_size, &found[i]);
        else
            found[i].physical = -1;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (i = 0; i < count; i++) {
        PyObject *item;
        if (found[i].physical < 0) {
            Py_INCREF(Py_None);
            item = Py_None;
        } else {
            item = Py_BuildValue("(LL)", found[i].physical, found[i].wire);
            if (item == NULL) {
                Py_CLEAR(result);
                goto done;
            }
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    Py_XDECREF(encoded);
    PyMem_Free(found);
    PyMem_Free(raw);
    PyMem_Free(buf);
    return result;
}

/* read_small(path, limit) -> bytes | int
 *
 * One small message file read whole, for a RETR: open(2) with the flags above, fstat(2),
 * read(2) of at most `limit` octets (one call for a file that fits: a read that comes
 * back short at the size fstat gave is the end), close(2). Not a regular file: its
 * st_mode (an int), for the caller to say why. An OSError (FileNotFoundError, ...) for a
 * failed call, with `path` as its file name. The GIL is released around the calls. */
static PyObject *
read_small(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *path = NULL, *out = NULL;
    Py_ssize_t limit, want, got = 0;
    struct stat st;
    int fd, err = 0, regular = 1;
    ssize_t n = 0;
    char *buf;
    const char *name;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "read_small() takes exactly 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit < 0 || limit > (1 << 26)) {
        PyErr_SetString(PyExc_ValueError, "limit must be between 0 and 64 MiB");
        return NULL;
    }
    if (!PyUnicode_FSConverter(args[0], &path))
        return NULL;
    name = PyBytes_AS_STRING(path);
    if (strlen(name) != (size_t)PyBytes_GET_SIZE(path)) {
        Py_DECREF(path);
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    do {
        fd = open(name, READ_FLAGS);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        err = errno;
    else if (fstat(fd, &st) != 0)
        err = errno;
    else if (!S_ISREG(st.st_mode))
        regular = 0;
    Py_END_ALLOW_THREADS
    if (err != 0 || !regular) {
        if (fd >= 0)
            close(fd);
        if (!regular) {
            Py_DECREF(path);
            return PyLong_FromLong((long)st.st_mode);
        }
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
        Py_DECREF(path);
        return NULL;
    }
    want = st.st_size < (off_t)limit ? (Py_ssize_t)st.st_size + 1 : limit;
    out = PyBytes_FromStringAndSize(NULL, want);
    if (out == NULL) {
        close(fd);
        Py_DECREF(path);
        return NULL;
    }
    buf = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    while (got < want) {
        n = read(fd, buf + got, (size_t)(want - got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        if (n == 0)
            break;
        got += n;
        if (got >= (Py_ssize_t)st.st_size)
            break; /* at the size fstat gave: the end, without one more read */
    }
    close(fd);
    Py_END_ALLOW_THREADS
    if (err != 0) {
        Py_DECREF(out);
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    return finish(out, got);
}

static PyMethodDef methods[] = {
    {"sizes", (PyCFunction)(void (*)(void))sizes, METH_FASTCALL,
     "sizes(dir_fd, names, buffer_size, /): [(physical, wire) or None] for each name."},
    {"read_small", (PyCFunction)(void (*)(void))read_small, METH_FASTCALL,
     "read_small(path, limit, /): the regular file's first `limit` octets, or its st_mode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "popbox.store._measure",
    "The Maildir size pass and a small file's whole read, compiled "
    "(popbox.store.maildir_measure).", -1, methods,
};

PyMODINIT_FUNC
PyInit__measure(void)
{
    return PyModule_Create(&module);
}
