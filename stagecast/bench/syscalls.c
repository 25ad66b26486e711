/* The kernel's own cost of the writes Stagecast makes most, on this machine, over loopback:
 * the floor under `count_us_per_socket_frame` (a small TCP write to each viewer's socket)
 * and under the forwarder's per-leg cost (a UDP datagram to each subscriber).
 *
 * Built and run by `stagecast bench syscalls` (stagecast/bench/syscalls.py), which reads
 * the `FIGURE <name> <microseconds>` lines this prints: the median over ROUNDS rounds of
 * the sending thread's CPU time per message.
 *
 * Usage: syscalls TCP_SOCKETS UDP_LEGS ROUNDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define COUNTS_FRAME 24 /* a counts frame: WebSocket header and msgpack body */
#define DATAGRAM 1200   /* a video RTP packet after SRTP */

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

static struct sockaddr_in loopback(void) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* Reads every readable socket until killed: a client process asleep in epoll_wait, so each
 * write also wakes it, as a viewer's frame does. */
static void reader(int *fds, int n) {
    int ep = epoll_create1(0);
    char buf[65536];
    struct epoll_event ev, ready[256];
    for (int i = 0; i < n; i++) {
        ev.events = EPOLLIN;
        ev.data.fd = fds[i];
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) fail("epoll_ctl");
    }
    for (;;) {
        int k = epoll_wait(ep, ready, 256, -1);
        for (int i = 0; i < k; i++)
            while (recv(ready[i].data.fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
            }
    }
}

static void drain(int *fds, int n) {
    char buf[65536];
    for (int i = 0; i < n; i++)
        while (recv(fds[i], buf, sizeof buf, MSG_DONTWAIT) > 0) {
        }
}

static void tcp(int n, int rounds) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = loopback();
    socklen_t len = sizeof a;
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 4096) < 0)
        fail("listen");
    getsockname(listener, (struct sockaddr *)&a, &len);
    int *client = malloc(sizeof(int) * (size_t)n), *server = malloc(sizeof(int) * (size_t)n);
    int one = 1;
    for (int i = 0; i < n; i++) {
        client[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (client[i] < 0 || connect(client[i], (struct sockaddr *)&a, sizeof a) < 0)
            fail("connect");
        server[i] = accept(listener, NULL, NULL);
        if (server[i] < 0) fail("accept");
        setsockopt(server[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char frame[COUNTS_FRAME];
    memset(frame, 0x82, sizeof frame);
    double *per = malloc(sizeof(double) * (size_t)rounds);
    /* 1: nobody waiting on the other end (the data is drained between rounds). */
    for (int r = 0; r < rounds; r++) {
        double t = thread_cpu();
        for (int i = 0; i < n; i++)
            if (send(server[i], frame, sizeof frame, MSG_DONTWAIT) != sizeof frame) fail("send");
        per[r] = (thread_cpu() - t) / n * 1e6;
        drain(client, n);
    }
    printf("FIGURE tcp_send_us %.3f\n", median(per, rounds));
    /* 2: a client process asleep in epoll_wait on every socket: each write wakes it. */
    pid_t child = fork();
    if (child == 0) reader(client, n);
    usleep(200000);
    for (int r = 0; r < rounds; r++) {
        double t = thread_cpu();
        for (int i = 0; i < n; i++)
            if (send(server[i], frame, sizeof frame, MSG_DONTWAIT) != sizeof frame) fail("send");
        per[r] = (thread_cpu() - t) / n * 1e6;
        usleep(20000); /* the reader catches up: each round finds it asleep again */
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    printf("FIGURE tcp_send_woken_us %.3f\n", median(per, rounds));
    for (int i = 0; i < n; i++) {
        close(client[i]);
        close(server[i]);
    }
    close(listener);
    free(client);
    free(server);
    free(per);
}

static void udp(int n, int rounds) {
    int *receiver = malloc(sizeof(int) * (size_t)n), *sender = malloc(sizeof(int) * (size_t)n);
    int *connected = malloc(sizeof(int) * (size_t)n);
    struct sockaddr_in *to = malloc(sizeof(struct sockaddr_in) * (size_t)n);
    int big = 8 << 20;
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a = loopback();
        socklen_t len = sizeof a;
        receiver[i] = socket(AF_INET, SOCK_DGRAM, 0);
        setsockopt(receiver[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        if (bind(receiver[i], (struct sockaddr *)&a, sizeof a) < 0) fail("bind");
        getsockname(receiver[i], (struct sockaddr *)&a, &len);
        to[i] = a;
        sender[i] = socket(AF_INET, SOCK_DGRAM, 0);
        connected[i] = socket(AF_INET, SOCK_DGRAM, 0);
        if (connect(connected[i], (struct sockaddr *)&a, sizeof a) < 0) fail("connect");
    }
    int shared = socket(AF_INET, SOCK_DGRAM, 0);
    char packet[DATAGRAM];
    memset(packet, 0x90, sizeof packet);
    struct mmsghdr *batch = calloc((size_t)n, sizeof *batch);
    struct iovec *iov = calloc((size_t)n, sizeof *iov);
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = packet;
        iov[i].iov_len = sizeof packet;
        batch[i].msg_hdr.msg_iov = &iov[i];
        batch[i].msg_hdr.msg_iovlen = 1;
        batch[i].msg_hdr.msg_name = &to[i];
        batch[i].msg_hdr.msg_namelen = sizeof to[i];
    }
    static const char *names[] = {"udp_sendto_us", "udp_send_connected_us", "udp_sendmmsg_us"};
    double *per = malloc(sizeof(double) * (size_t)rounds);
    for (int way = 0; way < 3; way++) {
        for (int r = 0; r < rounds; r++) {
            double t = thread_cpu();
            if (way == 0) { /* a socket per leg, as each subscriber's ICE pair has today */
                for (int i = 0; i < n; i++)
                    sendto(sender[i], packet, sizeof packet, 0, (struct sockaddr *)&to[i],
                           sizeof to[i]);
            } else if (way == 1) { /* the same, each socket connected to its peer */
                for (int i = 0; i < n; i++) send(connected[i], packet, sizeof packet, 0);
            } else { /* one socket for every leg (an ICE UDP mux): one call per packet */
                for (int sent = 0; sent < n;) {
                    int k = sendmmsg(shared, batch + sent, (unsigned)(n - sent), 0);
                    if (k <= 0) fail("sendmmsg");
                    sent += k;
                }
            }
            per[r] = (thread_cpu() - t) / n * 1e6;
            drain(receiver, n);
        }
        printf("FIGURE %s %.3f\n", names[way], median(per, rounds));
    }
    for (int i = 0; i < n; i++) {
        close(receiver[i]);
        close(sender[i]);
        close(connected[i]);
    }
    close(shared);
    free(receiver);
    free(sender);
    free(connected);
    free(to);
    free(batch);
    free(iov);
    free(per);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TCP_SOCKETS UDP_LEGS ROUNDS\n", argv[0]);
        return 2;
    }
    int sockets = atoi(argv[1]), legs = atoi(argv[2]), rounds = atoi(argv[3]);
    if (sockets < 1 || legs < 1 || rounds < 1) {
        fprintf(stderr, "TCP_SOCKETS, UDP_LEGS and ROUNDS must be positive\n");
        return 2;
    }
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    tcp(sockets, rounds);
    udp(legs, rounds);
    return 0;
}
