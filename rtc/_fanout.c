/*
 * rtc._fanout: one received RTP packet to many subscriber legs, each leg's work in C.
 *
 * Why: at 100 subscribers the forwarder's CPU is the per-leg work (docs/benchmarks.md,
 * media): serializing the leg's RTP header, storing the bytes for NACKs, SRTP, sendto.
 * In Python that is ~14 us per leg; here it is the libsrtp call and the system call.
 *
 * A `FastLeg` is one leg's state: how its header is written (payload type, SSRC, MID and
 * header extension ids, as rtc.packets.RtpWriter), its NACK history (a Python list the
 * leg's Python side shares), and, once bound, its route: the UDP socket's fd and address,
 * the libsrtp session (through pylibsrtp's own binding: the function and context
 * pointers it hands out) and the Python objects that say whether the route still holds
 * (ICE's nominated pair, the DTLS state, a tapped writer, asyncio's write queue).
 *
 * `fanout(packet, legs, sequence_numbers, stamps)` writes the packet on every leg whose
 * route holds and returns (sent, indexes of the legs it did not handle); the caller sends
 * those through the Python path, which rebinds a leg when it can. The system calls of
 * one packet run with the GIL released. `forward(packet, rewriters, legs, stamps)` does
 * the same with each leg's sequence number from its `Rewriter` (rtc.packets'
 * SequenceRewriter, in C), so the router's per-leg loop runs here too.
 *
 * (Over 500 lines: one leg type and the one loop that uses it, with the CPython
 * boilerplate both need; split, the loop would reach into the type from another file.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#define BUFFER_SIZE 1500     /* as pylibsrtp's buffer */
#define MAX_TRAILER 144      /* pylibsrtp.SRTP_MAX_TRAILER_LEN */
#define MAX_RTP (BUFFER_SIZE - MAX_TRAILER)
#define HISTORY_SIZE 128     /* aiortc.rtp.RTP_HISTORY_SIZE */
#define MAX_EXTENSIONS 28    /* MID (17) + abs-send-time (4) + audio level (2), padded */

typedef int (*protect_fn)(void *ctx, void *rtp, int *length);

typedef struct {
    PyObject_HEAD
    /* header */
    int configured;
    int payload_type;
    uint32_t ssrc;
    unsigned char mid_element[18];
    int mid_length;
    int abs_send_time_id;
    int audio_level_id;
    /* route */
    int bound;
    int fd;
    struct sockaddr_storage address;
    socklen_t address_length;
    protect_fn protect;
    void *context;
    PyObject *session;
    PyObject *fileno;
    PyObject *queued;
    PyObject *fallback;
    PyObject *peer;
    PyObject *nominated;
    PyObject *component;
    PyObject *pair;
    PyObject *dtls;
    PyObject *dtls_attributes;
    PyObject *connected;
    PyObject *sender;
    PyObject *history;
    int diverted;
    /* counters (the leg's Python side adds its own) */
    long long packets_sent;
    long long octets_sent;
    long long packets_refused;
    double last_sent_at;
    unsigned long long last_rtp_timestamp;
    /* one packet in flight */
    int length;
    int pending;
    int refused;
    int send_error;
    long long stamp;
    unsigned char buffer[BUFFER_SIZE];
} FastLeg;

static PyTypeObject FastLegType;

static PyObject *str_enabled, *str_state, *str_send_rtp, *str_payload, *str_timestamp,
    *str_marker, *str_audio_level, *str_red, *str_frombytes, *str_sequence_number;

static void clear_route(FastLeg *self) {
    self->bound = 0;
    Py_CLEAR(self->session);
    Py_CLEAR(self->fileno);
    Py_CLEAR(self->queued);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->nominated);
    Py_CLEAR(self->component);
    Py_CLEAR(self->pair);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->dtls_attributes);
    Py_CLEAR(self->connected);
    Py_CLEAR(self->sender);
}

static int FastLeg_init(FastLeg *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"history", NULL};
    PyObject *history;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyList_Type, &history))
        return -1;
    if (PyList_GET_SIZE(history) != HISTORY_SIZE) {
        PyErr_Format(PyExc_ValueError, "the history must be a list of %d items", HISTORY_SIZE);
        return -1;
    }
    clear_route(self);
    Py_INCREF(history);
    Py_XSETREF(self->history, history);
    return 0;
}

static int FastLeg_traverse(FastLeg *self, visitproc visit, void *arg) {
    Py_VISIT(self->session);
    Py_VISIT(self->fileno);
    Py_VISIT(self->queued);
    Py_VISIT(self->fallback);
    Py_VISIT(self->peer);
    Py_VISIT(self->nominated);
    Py_VISIT(self->component);
    Py_VISIT(self->pair);
    Py_VISIT(self->dtls);
    Py_VISIT(self->dtls_attributes);
    Py_VISIT(self->connected);
    Py_VISIT(self->sender);
    Py_VISIT(self->history);
    return 0;
}

static int FastLeg_clear(FastLeg *self) {
    clear_route(self);
    Py_CLEAR(self->history);
    return 0;
}

static void FastLeg_dealloc(FastLeg *self) {
    PyObject_GC_UnTrack(self);
    FastLeg_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *FastLeg_configure(FastLeg *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"payload_type", "ssrc", "mid_element", "abs_send_time_id",
                             "audio_level_id", NULL};
    int payload_type, abs_id, level_id;
    unsigned long ssrc;
    Py_buffer mid;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iky*ii", kwlist, &payload_type, &ssrc, &mid,
                                     &abs_id, &level_id))
        return NULL;
    int bad = payload_type < 0 || payload_type > 127 || ssrc > 0xFFFFFFFFUL || mid.len > 17 ||
              abs_id < 0 || abs_id > 14 || level_id < 0 || level_id > 14;
    if (!bad) {
        memcpy(self->mid_element, mid.buf, (size_t)mid.len);
        self->mid_length = (int)mid.len;
    }
    PyBuffer_Release(&mid);
    if (bad) {
        PyErr_SetString(PyExc_ValueError,
                        "a fast leg needs a payload type < 128, a 32-bit SSRC, a one-byte MID "
                        "element of at most 17 bytes and extension ids of at most 14");
        return NULL;
    }
    self->payload_type = payload_type;
    self->ssrc = (uint32_t)ssrc;
    self->abs_send_time_id = abs_id;
    self->audio_level_id = level_id;
    self->configured = 1;
    Py_RETURN_NONE;
}

static int parse_address(int family, PyObject *peer, struct sockaddr_storage *out,
                         socklen_t *length) {
    const char *host;
    int port;
    memset(out, 0, sizeof(*out));
    if (family == AF_UNIX && PyUnicode_Check(peer)) { /* a Unix datagram socket's path */
        struct sockaddr_un *un = (struct sockaddr_un *)out;
        Py_ssize_t size;
        const char *path = PyUnicode_AsUTF8AndSize(peer, &size);
        if (path == NULL)
            return -1;
        if ((size_t)size >= sizeof(un->sun_path)) {
            PyErr_SetString(PyExc_ValueError, "the socket path is too long");
            return -1;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, (size_t)size + 1);
        *length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)size + 1);
        return 0;
    }
    if (!PyTuple_Check(peer) || PyTuple_GET_SIZE(peer) < 2) {
        PyErr_SetString(PyExc_ValueError, "a fast leg's address is a (host, port) tuple (or a Unix socket's path)");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(peer, 0));
    if (host == NULL)
        return -1;
    port = (int)PyLong_AsLong(PyTuple_GET_ITEM(peer, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d out of range", port);
        return -1;
    }
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            goto bad_host;
        *length = sizeof(*in);
        return 0;
    }
    if (family == AF_INET6 && strchr(host, '%') == NULL) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            goto bad_host;
        *length = sizeof(*in6);
        return 0;
    }
bad_host:
    PyErr_Format(PyExc_ValueError, "address %R is not a numeric address of the socket's family",
                 peer);
    return -1;
}

static PyObject *FastLeg_bind(FastLeg *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"session", "protect", "context", "sock", "address", "queued",
                             "fallback", "nominated", "component", "pair", "dtls",
                             "connected", "sender", NULL};
    PyObject *session, *sock, *peer, *queued, *fallback, *nominated, *component, *pair, *dtls,
        *connected, *sender;
    unsigned long long protect, context;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKKOOOOO!OOOOO", kwlist, &session, &protect,
                                     &context, &sock, &peer, &queued, &fallback, &PyDict_Type,
                                     &nominated, &component, &pair, &dtls, &connected, &sender))
        return NULL;
    if (!protect || !context) {
        PyErr_SetString(PyExc_ValueError, "a fast leg needs libsrtp's protect and a context");
        return NULL;
    }
    PyObject *fileno = PyObject_GetAttrString(sock, "fileno");
    if (fileno == NULL)
        return NULL;
    PyObject *fd_object = PyObject_CallNoArgs(fileno);
    PyObject *family_object = fd_object ? PyObject_GetAttrString(sock, "family") : NULL;
    PyObject *attributes = family_object ? PyObject_GenericGetDict(dtls, NULL) : NULL;
    long fd = fd_object ? PyLong_AsLong(fd_object) : -1;
    long family = family_object ? PyLong_AsLong(family_object) : -1;
    Py_XDECREF(fd_object);
    Py_XDECREF(family_object);
    struct sockaddr_storage address;
    socklen_t length = 0;
    if (attributes == NULL || PyErr_Occurred() || fd < 0 ||
        parse_address((int)family, peer, &address, &length) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "the socket is closed");
        Py_DECREF(fileno);
        Py_XDECREF(attributes);
        return NULL;
    }
    clear_route(self);
    self->fd = (int)fd;
    self->address = address;
    self->address_length = length;
    self->protect = (protect_fn)(uintptr_t)protect;
    self->context = (void *)(uintptr_t)context;
    self->fileno = fileno;
    self->dtls_attributes = attributes;
    Py_INCREF(session);
    self->session = session;
    Py_INCREF(queued);
    self->queued = queued;
    Py_INCREF(fallback);
    self->fallback = fallback;
    Py_INCREF(peer);
    self->peer = peer;
    Py_INCREF(nominated);
    self->nominated = nominated;
    Py_INCREF(component);
    self->component = component;
    Py_INCREF(pair);
    self->pair = pair;
    Py_INCREF(dtls);
    self->dtls = dtls;
    Py_INCREF(connected);
    self->connected = connected;
    Py_INCREF(sender);
    self->sender = sender;
    self->bound = 1;
    Py_RETURN_NONE;
}

static PyObject *FastLeg_unbind(FastLeg *self, PyObject *Py_UNUSED(ignored)) {
    clear_route(self);
    Py_RETURN_NONE;
}

static PyObject *FastLeg_get_bound(FastLeg *self, void *closure) {
    return PyBool_FromLong(self->bound);
}

/* 1 when the leg's route still holds (as rtc.aiortc_adapter._DirectPath.usable, plus an
 * enabled sender, an open socket and nothing queued), 0 when not, -1 on a Python error. */
static int route_holds(FastLeg *self) {
    if (!self->bound || !self->configured || self->diverted)
        return 0;
    PyObject *value = PyObject_GetAttr(self->sender, str_enabled);
    if (value == NULL)
        return -1;
    int enabled = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (enabled <= 0)
        return enabled;
    value = PyDict_GetItemWithError(self->nominated, self->component);
    if (value != self->pair)
        return PyErr_Occurred() ? -1 : 0;
    value = PyObject_GetAttr(self->dtls, str_state);
    if (value == NULL)
        return -1;
    Py_DECREF(value);
    if (value != self->connected)
        return 0;
    int tapped = PyDict_Contains(self->dtls_attributes, str_send_rtp);
    if (tapped)
        return tapped < 0 ? -1 : 0;
    value = PyObject_CallNoArgs(self->fileno);
    if (value == NULL)
        return -1;
    long fd = PyLong_AsLong(value);
    Py_DECREF(value);
    if (fd != self->fd)
        return fd == -1 && PyErr_Occurred() ? -1 : 0;
    value = PyObject_CallNoArgs(self->queued);
    if (value == NULL)
        return -1;
    int queued = PyObject_IsTrue(value);
    Py_DECREF(value);
    return queued < 0 ? -1 : !queued;
}

/* Writes the leg's RTP header and `payload` into its buffer (as RtpWriter.serialize). */
static int write_rtp(FastLeg *self, const unsigned char *payload, Py_ssize_t payload_size,
                     int marker, uint16_t sequence_number, uint32_t timestamp,
                     uint32_t abs_send_time, int has_level, int voice, int level) {
    unsigned char *out = self->buffer;
    unsigned char extensions[MAX_EXTENSIONS];
    int ext = 0;
    memcpy(extensions, self->mid_element, (size_t)self->mid_length);
    ext = self->mid_length;
    if (self->abs_send_time_id) {
        extensions[ext++] = (unsigned char)(self->abs_send_time_id << 4 | 2);
        extensions[ext++] = (unsigned char)(abs_send_time >> 16);
        extensions[ext++] = (unsigned char)(abs_send_time >> 8);
        extensions[ext++] = (unsigned char)abs_send_time;
    }
    if (self->audio_level_id && has_level) {
        extensions[ext++] = (unsigned char)(self->audio_level_id << 4);
        extensions[ext++] = (unsigned char)((voice ? 0x80 : 0) | (level & 0x7F));
    }
    while (ext % 4)
        extensions[ext++] = 0;
    int header = 12 + (ext ? 4 + ext : 0);
    if (header + payload_size > MAX_RTP)
        return -1;
    out[0] = ext ? 0x90 : 0x80;
    out[1] = (unsigned char)((marker ? 0x80 : 0) | self->payload_type);
    out[2] = (unsigned char)(sequence_number >> 8);
    out[3] = (unsigned char)sequence_number;
    out[4] = (unsigned char)(timestamp >> 24);
    out[5] = (unsigned char)(timestamp >> 16);
    out[6] = (unsigned char)(timestamp >> 8);
    out[7] = (unsigned char)timestamp;
    out[8] = (unsigned char)(self->ssrc >> 24);
    out[9] = (unsigned char)(self->ssrc >> 16);
    out[10] = (unsigned char)(self->ssrc >> 8);
    out[11] = (unsigned char)self->ssrc;
    if (ext) {
        out[12] = 0xBE;
        out[13] = 0xDE;
        out[14] = (unsigned char)((ext >> 2) >> 8);
        out[15] = (unsigned char)(ext >> 2);
        memcpy(out + 16, extensions, (size_t)ext);
    }
    memcpy(out + header, payload, (size_t)payload_size);
    self->length = header + (int)payload_size;
    return 0;
}

static long long monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* -- the legs' SRTP and sendto, without the GIL, optionally shared with a helper thread --
 *
 * A packet's legs are independent once their RTP bytes are written: protecting one
 * leg's copy (its own libsrtp session) and writing it (its own socket) touch nothing
 * another leg touches, and no Python object. With `set_threads(2)` a helper thread
 * shares a packet's legs with the calling thread: both take the next leg not yet taken
 * (one atomic counter), so the fan-out ends in about half the time when a second core
 * is free, and the calling thread never waits for a helper that was not scheduled (it
 * takes every leg itself, then waits only for the one leg the helper may be writing).
 * The helper starts with the first packet it can share; `set_threads(1)` stops it and
 * joins it. */

static int threads = 1;
static Py_ssize_t min_split = 32; /* fewer legs than this: not worth waking the helper */

static struct {
    pthread_mutex_t busy; /* one caller at a time uses the helper (others: alone) */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_cond_t finished;
    pthread_t thread;
    int running;  /* started and not yet joined */
    int start_error; /* pthread_create's error: not tried again until set_threads(2) */
    int stopping; /* asked to return */
    int open;     /* a job whose legs the helper may still take */
    int working;  /* the helper took the open job and has not given it back */
    unsigned long posted;
    FastLeg **legs;
    Py_ssize_t count;
    int stamping;
    Py_ssize_t next; /* the job's next leg not taken (atomic) */
    unsigned long long caller_legs, helper_legs; /* legs of shared jobs, by who sent them */
} helper = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
             PTHREAD_COND_INITIALIZER};

static void send_leg(FastLeg *leg, int stamping) {
    leg->refused = leg->protect(leg->context, leg->buffer, &leg->length) != 0;
    if (leg->refused)
        return;
    ssize_t written = sendto(leg->fd, leg->buffer, (size_t)leg->length, 0,
                             (struct sockaddr *)&leg->address, leg->address_length);
    leg->send_error = written < 0 ? errno : 0;
    if (stamping)
        leg->stamp = monotonic_ns();
}

/* Sends the job's legs not taken yet, one at a time; returns how many it sent. */
static Py_ssize_t take_legs(FastLeg **legs, Py_ssize_t count, int stamping) {
    Py_ssize_t taken = 0;
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&helper.next, 1, __ATOMIC_ACQ_REL);
        if (i >= count)
            return taken;
        send_leg(legs[i], stamping);
        taken++;
    }
}

static void *helper_main(void *unused) {
    unsigned long seen = 0;
    pthread_mutex_lock(&helper.lock);
    for (;;) {
        while (helper.posted == seen && !helper.stopping)
            pthread_cond_wait(&helper.wake, &helper.lock);
        if (helper.stopping)
            break;
        seen = helper.posted;
        if (!helper.open)
            continue; /* woken too late: the caller sent every leg itself */
        helper.working = 1;
        FastLeg **legs = helper.legs;
        Py_ssize_t count = helper.count;
        int stamping = helper.stamping;
        pthread_mutex_unlock(&helper.lock);
        Py_ssize_t taken = take_legs(legs, count, stamping);
        pthread_mutex_lock(&helper.lock);
        helper.helper_legs += (unsigned long long)taken;
        helper.working = 0;
        pthread_cond_signal(&helper.finished);
    }
    pthread_mutex_unlock(&helper.lock);
    return NULL;
}

/* In a forked child the helper thread is gone: the child's first packet it can share
 * starts another (the setting is kept). */
static void helper_after_fork(void) {
    pthread_mutex_init(&helper.busy, NULL);
    pthread_mutex_init(&helper.lock, NULL);
    pthread_cond_init(&helper.wake, NULL);
    pthread_cond_init(&helper.finished, NULL);
    helper.running = helper.stopping = helper.open = helper.working = helper.start_error = 0;
    helper.posted = 0;
}

/* Starts the helper thread, once (called holding `helper.busy`); 0 when it runs. */
static int start_helper(void) {
    if (helper.running)
        return 0;
    if (helper.start_error)
        return -1;
    int error = pthread_create(&helper.thread, NULL, helper_main, NULL);
    if (error) {
        helper.start_error = error; /* the fan-out goes on alone; threads() says 1 */
        return -1;
    }
    helper.running = 1;
    return 0;
}

/* Called without the GIL. The helper starts with the first packet it can share. */
static void send_legs(FastLeg **legs, Py_ssize_t count, int stamping) {
    if (threads < 2 || count < min_split || pthread_mutex_trylock(&helper.busy) != 0) {
        for (Py_ssize_t i = 0; i < count; i++)
            send_leg(legs[i], stamping);
        return;
    }
    if (start_helper() != 0) {
        pthread_mutex_unlock(&helper.busy);
        for (Py_ssize_t i = 0; i < count; i++)
            send_leg(legs[i], stamping);
        return;
    }
    pthread_mutex_lock(&helper.lock);
    helper.legs = legs;
    helper.count = count;
    helper.stamping = stamping;
    helper.next = 0;
    helper.open = 1;
    helper.posted++;
    pthread_cond_signal(&helper.wake);
    pthread_mutex_unlock(&helper.lock);
    Py_ssize_t taken = take_legs(legs, count, stamping);
    pthread_mutex_lock(&helper.lock);
    helper.open = 0; /* a helper waking from now on leaves the legs alone */
    helper.caller_legs += (unsigned long long)taken;
    while (helper.working)
        pthread_cond_wait(&helper.finished, &helper.lock);
    pthread_mutex_unlock(&helper.lock);
    pthread_mutex_unlock(&helper.busy);
}

/* Stops the helper thread, if it runs, and joins it (called without the GIL). */
static void stop_helper(void) {
    pthread_mutex_lock(&helper.busy); /* no caller is sharing a job with it */
    if (helper.running) {
        pthread_mutex_lock(&helper.lock);
        helper.stopping = 1;
        pthread_cond_signal(&helper.wake);
        pthread_mutex_unlock(&helper.lock);
        pthread_join(helper.thread, NULL);
        helper.running = helper.stopping = 0;
    }
    pthread_mutex_unlock(&helper.busy);
}

static PyObject *set_threads(PyObject *module, PyObject *arg) {
    long wanted = PyLong_AsLong(arg);
    if (wanted == -1 && PyErr_Occurred())
        return NULL;
    if (wanted != 1 && wanted != 2) {
        PyErr_SetString(PyExc_ValueError, "the fan-out runs on 1 or 2 threads");
        return NULL;
    }
    threads = (int)wanted;
    if (wanted == 1) {
        Py_BEGIN_ALLOW_THREADS
        stop_helper();
        Py_END_ALLOW_THREADS
    } else {
        helper.start_error = 0; /* try again */
    }
    Py_RETURN_NONE;
}

static PyObject *get_threads(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(threads < 2 || helper.start_error ? 1 : 2);
}

static PyObject *get_helper_running(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(helper.running);
}

static PyObject *set_min_split(PyObject *module, PyObject *arg) {
    Py_ssize_t wanted = PyLong_AsSsize_t(arg);
    if (wanted == -1 && PyErr_Occurred())
        return NULL;
    if (wanted < 2) {
        PyErr_Format(PyExc_ValueError, "a packet is shared from 2 legs up, not %zd", wanted);
        return NULL;
    }
    min_split = wanted;
    Py_RETURN_NONE;
}

static PyObject *get_shared_legs(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    unsigned long long caller, helped;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&helper.lock);
    caller = helper.caller_legs;
    helped = helper.helper_legs;
    pthread_mutex_unlock(&helper.lock);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(KK)", caller, helped);
}

/* Sends `packet` on legs[i] as seqs[i] (-1: not at all) and returns (sent, unhandled):
 * the indexes of the legs not handled, or with `pairs` (index, sequence number) tuples. */
static PyObject *send_all(PyObject *packet, PyObject *legs, const long *seqs,
                          PyObject *stamps, int pairs) {
    Py_ssize_t count = PyList_GET_SIZE(legs);
    PyObject *unhandled = PyList_New(0);
    if (unhandled == NULL)
        return NULL;
    PyObject *payload = NULL, *value = NULL, *result = NULL;
    FastLeg **sending = NULL;
    int red = 0, has_level = 0, voice = 0, level = 0, marker;
    unsigned long long timestamp;
    payload = PyObject_GetAttr(packet, str_payload);
    if (payload == NULL || !PyBytes_Check(payload)) {
        if (payload != NULL)
            PyErr_SetString(PyExc_TypeError, "the packet's payload must be bytes");
        goto done;
    }
    if ((value = PyObject_GetAttr(packet, str_red)) == NULL || (red = PyObject_IsTrue(value)) < 0)
        goto done;
    Py_CLEAR(value);
    if ((value = PyObject_GetAttr(packet, str_marker)) == NULL ||
        (marker = PyObject_IsTrue(value)) < 0)
        goto done;
    Py_CLEAR(value);
    if ((value = PyObject_GetAttr(packet, str_timestamp)) == NULL)
        goto done;
    timestamp = PyLong_AsUnsignedLongLong(value);
    if (PyErr_Occurred())
        goto done;
    if (timestamp > 0xFFFFFFFFULL) {
        PyErr_Format(PyExc_ValueError, "RTP timestamp %llu does not fit 32 bits", timestamp);
        goto done;
    }
    Py_CLEAR(value);
    if ((value = PyObject_GetAttr(packet, str_audio_level)) == NULL)
        goto done;
    if (value != Py_None) {
        if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2) {
            PyErr_SetString(PyExc_TypeError, "audio_level is (voice, level) or None");
            goto done;
        }
        has_level = 1;
        if ((voice = PyObject_IsTrue(PyTuple_GET_ITEM(value, 0))) < 0)
            goto done;
        level = (int)PyLong_AsLong(PyTuple_GET_ITEM(value, 1));
        if (level == -1 && PyErr_Occurred())
            goto done;
    }
    Py_CLEAR(value);

    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    double now = (double)wall.tv_sec + (double)wall.tv_nsec * 1e-9;
    uint32_t abs_send_time = (uint32_t)((long long)(now * (double)(1 << 18)) & 0xFFFFFF);
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(payload);
    Py_ssize_t size = PyBytes_GET_SIZE(payload);
    Py_ssize_t pending = 0;
    sending = PyMem_New(FastLeg *, count ? count : 1); /* the legs to protect and write */
    if (sending == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    /* Each leg: check its route, write and keep its RTP bytes, protect them. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(legs, i);
        if (!PyObject_TypeCheck(item, &FastLegType)) {
            PyErr_SetString(PyExc_TypeError, "legs must be FastLeg objects");
            goto done;
        }
        FastLeg *leg = (FastLeg *)item;
        leg->pending = 0;
        long seq = seqs[i];
        if (seq < 0)
            continue;
        int holds = red ? 0 : route_holds(leg);
        if (holds < 0)
            goto done;
        if (!holds || write_rtp(leg, data, size, marker, (uint16_t)seq, (uint32_t)timestamp,
                                abs_send_time, has_level, voice, level) < 0) {
            PyObject *index = pairs ? Py_BuildValue("(nl)", i, seq) : PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(unhandled, index) < 0) {
                Py_XDECREF(index);
                goto done;
            }
            Py_DECREF(index);
            continue;
        }
        PyObject *kept = PyBytes_FromStringAndSize((const char *)leg->buffer, leg->length);
        if (kept == NULL)
            goto done;
        PyList_SetItem(leg->history, seq % HISTORY_SIZE, kept); /* steals `kept` */
        sending[pending++] = leg;
        leg->pending = 1;
    }

    /* SRTP and the system calls, without the GIL (on two threads with a helper). */
    int stamping = stamps != Py_None;
    if (pending) {
        Py_BEGIN_ALLOW_THREADS
        send_legs(sending, pending, stamping);
        Py_END_ALLOW_THREADS
    }

    /* Counters, and the transport's queue for a datagram the socket had no room for. */
    long sent = 0;
    /* the stamps of the legs sent, appended to `stamps` (an array of int64) at once */
    PyObject *sent_stamps = stamping ? PyBytes_FromStringAndSize(NULL, pending * 8) : NULL;
    long long *stamped = sent_stamps ? (long long *)PyBytes_AS_STRING(sent_stamps) : NULL;
    if (stamping && sent_stamps == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count && pending; i++) {
        FastLeg *leg = (FastLeg *)PyList_GET_ITEM(legs, i);
        if (!leg->pending)
            continue;
        leg->pending = 0;
        if (leg->refused) {
            leg->packets_refused++;
            continue;
        }
        int error = leg->send_error;
        if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR) {
            PyObject *datagram =
                PyBytes_FromStringAndSize((const char *)leg->buffer, leg->length);
            PyObject *queued =
                datagram ? PyObject_CallFunctionObjArgs(leg->fallback, datagram, leg->peer, NULL)
                         : NULL;
            Py_XDECREF(datagram);
            if (queued == NULL) {
                Py_XDECREF(sent_stamps);
                goto done;
            }
            Py_DECREF(queued);
        } else if (error) {
            continue; /* lost, as UDP may lose it */
        }
        leg->packets_sent++;
        leg->octets_sent += size;
        leg->last_sent_at = now;
        leg->last_rtp_timestamp = timestamp;
        if (stamping)
            stamped[sent] = leg->stamp;
        sent++;
    }
    if (stamping) {
        if (sent && _PyBytes_Resize(&sent_stamps, sent * 8) < 0)
            goto done; /* (it freed the bytes) */
        PyObject *extended =
            sent ? PyObject_CallMethodOneArg(stamps, str_frombytes, sent_stamps) : Py_None;
        Py_DECREF(sent_stamps);
        if (extended == NULL)
            goto done;
        if (sent)
            Py_DECREF(extended);
    }
    result = Py_BuildValue("(lO)", sent, unhandled);
done:
    if (result == NULL) {
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *item = PyList_GET_ITEM(legs, i);
            if (PyObject_TypeCheck(item, &FastLegType))
                ((FastLeg *)item)->pending = 0;
        }
    }
    PyMem_Free(sending);
    Py_XDECREF(payload);
    Py_XDECREF(value);
    Py_DECREF(unhandled);
    return result;
}

static PyObject *fanout(PyObject *module, PyObject *args) {
    PyObject *packet, *legs, *sequence_numbers, *stamps;
    if (!PyArg_ParseTuple(args, "OO!O!O", &packet, &PyList_Type, &legs, &PyList_Type,
                          &sequence_numbers, &stamps))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(legs);
    if (PyList_GET_SIZE(sequence_numbers) != count) {
        PyErr_SetString(PyExc_ValueError, "one sequence number per leg");
        return NULL;
    }
    long *seqs = PyMem_New(long, count ? count : 1);
    if (seqs == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        long seq = PyLong_AsLong(PyList_GET_ITEM(sequence_numbers, i));
        if (seq == -1 && PyErr_Occurred()) {
            PyMem_Free(seqs);
            return NULL;
        }
        if (seq < 0 || seq > 0xFFFF) {
            PyErr_Format(PyExc_ValueError, "sequence number %ld out of range", seq);
            PyMem_Free(seqs);
            return NULL;
        }
        seqs[i] = seq;
    }
    PyObject *result = send_all(packet, legs, seqs, stamps, 0);
    PyMem_Free(seqs);
    return result;
}

/* -- Rewriter: rtc.packets.SequenceRewriter, in C, so that `forward` rewrites too -- */

typedef struct {
    PyObject_HEAD
    long next_out;
    long offset;
    long highest_in;
    long floor;
    int restart;
} Rewriter;

static PyTypeObject RewriterType;

static int seq_newer(long a, long b) { return a != b && ((a - b) & 0xFFFF) < 0x8000; }

/* The outgoing sequence number for incoming `seq` (0..0xFFFF), or -1 to drop it. */
static long rewrite_one(Rewriter *self, long seq) {
    if (self->restart) {
        long out = self->next_out;
        self->restart = 0;
        self->offset = (out - seq) & 0xFFFF;
        self->highest_in = self->floor = seq;
        self->next_out = (out + 1) & 0xFFFF;
        return out;
    }
    if (seq_newer(seq, self->highest_in)) {
        long out = (seq + self->offset) & 0xFFFF;
        self->highest_in = seq;
        self->next_out = (out + 1) & 0xFFFF;
        return out;
    }
    if (seq == self->highest_in || !seq_newer(seq, self->floor))
        return -1;
    return (seq + self->offset) & 0xFFFF;
}

static int Rewriter_init(Rewriter *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"first", NULL};
    PyObject *first;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyLong_Type, &first))
        return -1;
    unsigned long long bits = PyLong_AsUnsignedLongLongMask(first); /* as Python's `& 0xFFFF` */
    if (bits == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    self->next_out = (long)(bits & 0xFFFF);
    self->offset = self->highest_in = self->floor = 0;
    self->restart = 1;
    return 0;
}

static long sequence_argument(PyObject *value) {
    long seq = PyLong_AsLong(value);
    if (seq == -1 && PyErr_Occurred())
        return -1;
    if (seq < 0 || seq > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "sequence number %ld out of range", seq);
        return -1;
    }
    return seq;
}

static PyObject *Rewriter_rewrite(Rewriter *self, PyObject *arg) {
    long seq = sequence_argument(arg);
    if (seq < 0)
        return NULL;
    long out = rewrite_one(self, seq);
    if (out < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(out);
}

static PyObject *Rewriter_skip(Rewriter *self, PyObject *arg) {
    long seq = sequence_argument(arg);
    if (seq < 0)
        return NULL;
    if (self->restart)
        Py_RETURN_TRUE;
    if (seq != ((self->highest_in + 1) & 0xFFFF))
        Py_RETURN_FALSE;
    self->highest_in = self->floor = seq;
    self->offset = (self->offset - 1) & 0xFFFF;
    Py_RETURN_TRUE;
}

static PyObject *Rewriter_restart(Rewriter *self, PyObject *Py_UNUSED(ignored)) {
    self->restart = 1;
    Py_RETURN_NONE;
}

static PyObject *Rewriter_get_started(Rewriter *self, void *closure) {
    return PyBool_FromLong(!self->restart);
}

static PyMethodDef Rewriter_methods[] = {
    {"rewrite", (PyCFunction)Rewriter_rewrite, METH_O, NULL},
    {"skip", (PyCFunction)Rewriter_skip, METH_O, NULL},
    {"restart", (PyCFunction)Rewriter_restart, METH_NOARGS, NULL},
    {NULL},
};

static PyGetSetDef Rewriter_getset[] = {
    {"started", (getter)Rewriter_get_started, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject RewriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fanout.Rewriter",
    .tp_basicsize = sizeof(Rewriter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rewriter_init,
    .tp_methods = Rewriter_methods,
    .tp_getset = Rewriter_getset,
};

/* forward(packet, rewriters, legs, stamps): each leg's sequence number from its rewriter
 * (a dropped packet leaves that leg out), then as `fanout`; the legs handed back come as
 * (index, sequence number). */
static PyObject *forward(PyObject *module, PyObject *args) {
    PyObject *packet, *rewriters, *legs, *stamps;
    if (!PyArg_ParseTuple(args, "OO!O!O", &packet, &PyList_Type, &rewriters, &PyList_Type,
                          &legs, &stamps))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(legs);
    if (PyList_GET_SIZE(rewriters) != count) {
        PyErr_SetString(PyExc_ValueError, "one rewriter per leg");
        return NULL;
    }
    PyObject *value = PyObject_GetAttr(packet, str_sequence_number);
    if (value == NULL)
        return NULL;
    long seq = sequence_argument(value);
    Py_DECREF(value);
    if (seq < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyObject_TypeCheck(PyList_GET_ITEM(rewriters, i), &RewriterType)) {
            PyErr_SetString(PyExc_TypeError, "rewriters must be Rewriter objects");
            return NULL;
        }
    }
    long *seqs = PyMem_New(long, count ? count : 1);
    if (seqs == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++)
        seqs[i] = rewrite_one((Rewriter *)PyList_GET_ITEM(rewriters, i), seq);
    PyObject *result = send_all(packet, legs, seqs, stamps, 1);
    PyMem_Free(seqs);
    return result;
}

static PyMemberDef FastLeg_members[] = {
    {"packets_sent", T_LONGLONG, offsetof(FastLeg, packets_sent), 0, NULL},
    {"octets_sent", T_LONGLONG, offsetof(FastLeg, octets_sent), 0, NULL},
    {"packets_refused", T_LONGLONG, offsetof(FastLeg, packets_refused), 0, NULL},
    {"last_sent_at", T_DOUBLE, offsetof(FastLeg, last_sent_at), 0, NULL},
    {"last_rtp_timestamp", T_ULONGLONG, offsetof(FastLeg, last_rtp_timestamp), 0, NULL},
    {"diverted", T_BOOL, offsetof(FastLeg, diverted), 0, NULL},
    {"history", T_OBJECT, offsetof(FastLeg, history), READONLY, NULL},
    {NULL},
};

static PyGetSetDef FastLeg_getset[] = {
    {"bound", (getter)FastLeg_get_bound, NULL, NULL, NULL},
    {NULL},
};

static PyMethodDef FastLeg_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))FastLeg_configure, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"bind", (PyCFunction)(void (*)(void))FastLeg_bind, METH_VARARGS | METH_KEYWORDS, NULL},
    {"unbind", (PyCFunction)FastLeg_unbind, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject FastLegType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fanout.FastLeg",
    .tp_basicsize = sizeof(FastLeg),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastLeg_init,
    .tp_dealloc = (destructor)FastLeg_dealloc,
    .tp_traverse = (traverseproc)FastLeg_traverse,
    .tp_clear = (inquiry)FastLeg_clear,
    .tp_members = FastLeg_members,
    .tp_getset = FastLeg_getset,
    .tp_methods = FastLeg_methods,
};

static PyMethodDef module_methods[] = {
    {"fanout", fanout, METH_VARARGS, NULL},
    {"forward", forward, METH_VARARGS, NULL},
    {"set_threads", set_threads, METH_O, NULL},
    {"threads", get_threads, METH_NOARGS, NULL},
    {"set_min_split", set_min_split, METH_O, NULL},
    {"helper_running", get_helper_running, METH_NOARGS, NULL},
    {"shared_legs", get_shared_legs, METH_NOARGS, NULL},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "rtc._fanout", NULL, -1, module_methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
#define INTERN(var, text)                                                                      \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                      \
        return NULL;
    INTERN(str_enabled, "_enabled");
    INTERN(str_state, "_state");
    INTERN(str_send_rtp, "_send_rtp");
    INTERN(str_payload, "payload");
    INTERN(str_timestamp, "timestamp");
    INTERN(str_marker, "marker");
    INTERN(str_audio_level, "audio_level");
    INTERN(str_red, "red");
    INTERN(str_frombytes, "frombytes");
    INTERN(str_sequence_number, "sequence_number");
#undef INTERN
    if (PyType_Ready(&FastLegType) < 0 || PyType_Ready(&RewriterType) < 0)
        return NULL;
    if (pthread_atfork(NULL, NULL, helper_after_fork) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    Py_INCREF(&FastLegType);
    if (PyModule_AddObject(module, "FastLeg", (PyObject *)&FastLegType) < 0) {
        Py_DECREF(&FastLegType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&RewriterType);
    if (PyModule_AddObject(module, "Rewriter", (PyObject *)&RewriterType) < 0) {
        Py_DECREF(&RewriterType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "HISTORY_SIZE", HISTORY_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_RTP_SIZE", MAX_RTP) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
