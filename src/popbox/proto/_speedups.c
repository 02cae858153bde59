/* The inner loops of popbox.proto.wire and popbox.client.crlf, compiled.
 *
 * popbox.proto._native holds the same five functions in Python; wire.py and crlf.py
 * import this module when it was built and fall back to those otherwise (or when
 * POPBOX_PURE_PYTHON is set). Each function does one pass over one chunk. The state
 * between chunks (a "\r" held back at a chunk end, whether the next chunk starts a
 * line) stays in the Python classes, which pass in what a function needs.
 *
 * message() encodes a whole small message after its status line and terminates it, in
 * one allocation, and checks its wire size on the way (the octets written, less the
 * stuffed dots).
 *
 * Every function walks the chunk line by line: memchr finds the next "\n" and a line's
 * bytes are copied with memcpy, so the cost is per line, not per byte.
 *
 * Sizes: a chunk of n bytes encodes to at most 2n bytes (a line of k >= 1 bytes plus its
 * "\n" gains at most a "." and a "\r"), checked against PY_SSIZE_T_MAX before any
 * arithmetic; the decoders only shrink.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A read-only view of a bytes-like argument: bytes directly, anything else through
 * the buffer protocol. */
typedef struct {
    const char *buf;
    Py_ssize_t len;
    Py_buffer view;
    int has_view;
} input;

static int
input_get(PyObject *obj, input *in)
{
    if (PyBytes_CheckExact(obj)) {
        in->buf = PyBytes_AS_STRING(obj);
        in->len = PyBytes_GET_SIZE(obj);
        in->has_view = 0;
        return 0;
    }
    if (PyObject_GetBuffer(obj, &in->view, PyBUF_SIMPLE) < 0)
        return -1;
    in->buf = (const char *)in->view.buf;
    in->len = in->view.len;
    in->has_view = 1;
    return 0;
}

static void
input_release(input *in)
{
    if (in->has_view) {
        PyBuffer_Release(&in->view);
        in->has_view = 0;
    }
}

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)",
                 name, expected, nargs);
    return -1;
}

/* Shrinks `*out` to `used` bytes (it was allocated larger). */
static PyObject *
finish_bytes(PyObject *out, Py_ssize_t used)
{
    if (used != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, used) < 0)
        return NULL; /* _PyBytes_Resize released `out` */
    return out;
}

static void
replace_nuls(char *p, Py_ssize_t n)
{
    char *end = p + n;
    while (p < end && (p = memchr(p, '\0', (size_t)(end - p))) != NULL)
        *p++ = (char)0x80;
}

/* Writes `in` as sent after `head` (copied first) into a new bytes object: CRLF line
 * ends, line-starting dots doubled, NULs as 0x80 with `no_nuls`; with `terminate`, a line
 * end where the data does not end with one (not for empty data) and ".\r\n" after it.
 * `*dots` gets the number of dots added: the wire size of the data is the octets written
 * after `head`, less those dots and the terminator line. */
static PyObject *
encode_after(const char *head, Py_ssize_t head_len, input *in, int line_start, int no_nuls,
             int terminate, Py_ssize_t *dots)
{
    PyObject *out;
    char *o;
    Py_ssize_t cap, used, extra = terminate ? 5 : 0, added = 0;
    const char *p, *end;

    if (in->len > (PY_SSIZE_T_MAX - head_len - extra) / 2)
        return PyErr_NoMemory();
    /* A first guess that fits mail with lines of 16 bytes or more; a chunk that needs
     * more is grown once, to the bound of what its rest can need. */
    cap = in->len + in->len / 16 + 2;
    if (cap > 2 * in->len)
        cap = 2 * in->len;
    cap += head_len + extra;
    out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        return NULL;
    memcpy(PyBytes_AS_STRING(out), head, (size_t)head_len);
    used = head_len;
    p = in->buf;
    end = in->buf + in->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl != NULL ? nl : end;
        Py_ssize_t len = stop - p;
        Py_ssize_t content = len;
        int dot = line_start && len > 0 && *p == '.';
        Py_ssize_t need;

        if (nl != NULL && content > 0 && stop[-1] == '\r')
            content--; /* the "\r" of "\r\n" is written back with the "\n" */
        need = dot + content + (nl != NULL ? 2 : 0);
        if (need > cap - used - extra) {
            /* The rest of the input needs at most twice its length: no overflow, as
             * used <= head_len + 2 * (p - in->buf), checked above. */
            Py_ssize_t grown = used + 2 * (end - p) + extra;
            if (_PyBytes_Resize(&out, grown) < 0)
                return NULL;
            cap = grown;
        }
        o = PyBytes_AS_STRING(out) + used;
        if (dot)
            *o++ = '.';
        memcpy(o, p, (size_t)content);
        if (no_nuls)
            replace_nuls(o, content);
        o += content;
        if (nl != NULL) {
            *o++ = '\r';
            *o++ = '\n';
            p = nl + 1;
            line_start = 1;
        }
        else {
            p = end;
            line_start = 0;
        }
        used += need;
        added += dot;
    }
    if (terminate) {
        o = PyBytes_AS_STRING(out) + used;
        if (!line_start) { /* (a lone "\r" at the end is kept, then the line end) */
            *o++ = '\r';
            *o++ = '\n';
            used += 2;
        }
        memcpy(o, ".\r\n", 3);
        used += 3;
    }
    *dots = added;
    return finish_bytes(out, used);
}

/* encode(chunk, at_line_start, no_nuls) -> bytes
 *
 * RFC 1939 section 3: CRLF line ends (a "\r\n" stays, a lone "\n" becomes "\r\n", a lone
 * "\r" is kept), a "." that starts a line doubled, and with `no_nuls` each NUL sent as
 * 0x80. The first byte starts a line when `at_line_start`. */
static PyObject *
encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    input in;
    int line_start, no_nuls;
    PyObject *out;
    Py_ssize_t dots;

    if (check_nargs("encode", nargs, 3) < 0)
        return NULL;
    if ((line_start = PyObject_IsTrue(args[1])) < 0)
        return NULL;
    if ((no_nuls = PyObject_IsTrue(args[2])) < 0)
        return NULL;
    if (input_get(args[0], &in) < 0)
        return NULL;
    out = encode_after("", 0, &in, line_start, no_nuls, 0, &dots);
    input_release(&in);
    return out;
}

/* message(head, data, size, no_nuls) -> bytes | None
 *
 * A whole multi-line reply in one piece: `head` (the status line, with its CRLF), then
 * the whole message `data` as encode() sends it from a line start, a line end if it
 * does not end with one, and the terminating ".\r\n". None when the wire size of `data`
 * (popbox.proto.wire.wire_size: CRLF line ends, a final line end added, no stuffing) is
 * not `size`: counted in the same pass. */
static PyObject *
message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    input head, in;
    int no_nuls;
    Py_ssize_t size, dots, wire;
    PyObject *out;

    if (check_nargs("message", nargs, 4) < 0)
        return NULL;
    size = PyLong_AsSsize_t(args[2]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if ((no_nuls = PyObject_IsTrue(args[3])) < 0)
        return NULL;
    if (input_get(args[0], &head) < 0)
        return NULL;
    if (input_get(args[1], &in) < 0) {
        input_release(&head);
        return NULL;
    }
    out = encode_after(head.buf, head.len, &in, 1, no_nuls, 1, &dots);
    input_release(&head);
    input_release(&in);
    if (out == NULL)
        return NULL;
    wire = PyBytes_GET_SIZE(out) - head.len - 3 - dots;
    if (wire != size) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* octets(chunk) -> int
 *
 * The length of `chunk` once its line ends are CRLF: its length plus one for every "\n"
 * not already preceded by "\r". */
static PyObject *
octets(PyObject *module, PyObject *arg)
{
    input in;
    size_t size;
    const char *p, *end, *nl;

    if (input_get(arg, &in) < 0)
        return NULL;
    size = (size_t)in.len; /* + at most in.len more: fits in size_t */
    p = in.buf;
    end = in.buf + in.len;
    while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        if (nl == in.buf || nl[-1] != '\r')
            size++;
        p = nl + 1;
    }
    input_release(&in);
    return PyLong_FromSize_t(size);
}

/* to_lf(chunk) -> bytes: every "\r\n" becomes "\n"; a lone "\r" is kept. */
static PyObject *
to_lf(PyObject *module, PyObject *arg)
{
    input in;
    PyObject *out;
    char *o;
    const char *p, *end, *nl;

    if (input_get(arg, &in) < 0)
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, in.len);
    if (out == NULL) {
        input_release(&in);
        return NULL;
    }
    o = PyBytes_AS_STRING(out);
    p = in.buf;
    end = in.buf + in.len;
    while (p < end) {
        Py_ssize_t len;
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) {
            len = end - p;
            memcpy(o, p, (size_t)len);
            o += len;
            break;
        }
        len = nl - p;
        if (len > 0 && nl[-1] == '\r')
            len--;
        memcpy(o, p, (size_t)len);
        o += len;
        *o++ = '\n';
        p = nl + 1;
    }
    input_release(&in);
    return finish_bytes(out, o - PyBytes_AS_STRING(out));
}

/* unstuff(chunk, at_line_start) -> bytes
 *
 * RFC 1939 section 3, the client's side: the first "." of every line is removed (the
 * first byte starts a line when `at_line_start`). The terminator line must already be
 * cut off. */
static PyObject *
unstuff(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    input in;
    int line_start;
    PyObject *out;
    char *o;
    const char *p, *end;

    if (check_nargs("unstuff", nargs, 2) < 0)
        return NULL;
    if ((line_start = PyObject_IsTrue(args[1])) < 0)
        return NULL;
    if (input_get(args[0], &in) < 0)
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, in.len);
    if (out == NULL) {
        input_release(&in);
        return NULL;
    }
    o = PyBytes_AS_STRING(out);
    p = in.buf;
    end = in.buf + in.len;
    while (p < end) {
        const char *nl;
        Py_ssize_t len;
        if (line_start && *p == '.')
            p++;
        if (p == end)
            break;
        nl = memchr(p, '\n', (size_t)(end - p));
        len = (nl != NULL ? nl + 1 : end) - p;
        memcpy(o, p, (size_t)len);
        o += len;
        p += len;
        line_start = 1;
    }
    input_release(&in);
    return finish_bytes(out, o - PyBytes_AS_STRING(out));
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(chunk, at_line_start, no_nuls) -> the chunk as sent: CRLF, dot-stuffed"},
    {"message", (PyCFunction)(void (*)(void))message, METH_FASTCALL,
     "message(head, data, size, no_nuls) -> head, the message as sent, its end; or None"},
    {"octets", octets, METH_O, "octets(chunk) -> the chunk's length with CRLF line ends"},
    {"to_lf", to_lf, METH_O, "to_lf(chunk) -> the chunk with CRLF line ends made LF"},
    {"unstuff", (PyCFunction)(void (*)(void))unstuff, METH_FASTCALL,
     "unstuff(chunk, at_line_start) -> the chunk without the stuffed dots"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "popbox.proto._speedups",
    .m_doc = "Compiled inner loops of popbox.proto.wire and popbox.client.crlf.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}
