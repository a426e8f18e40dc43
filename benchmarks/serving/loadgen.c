/* Open-loop HTTP/1.1 load generator (the wrk2 model), one thread, epoll.
 *
 * Each of C keep-alive connections owns a fixed schedule of R/C requests per second, staggered
 * so the whole set is evenly spaced. A request goes out when its scheduled time has come and
 * its connection is free (no pipelining). Latency runs from the SCHEDULED send time to the
 * last byte of the response, so a stalled server is charged for the requests it delayed
 * (coordinated omission corrected). Only requests scheduled inside the measured window (after
 * the warm-up) count; in-flight ones get --drain seconds to finish after the window.
 *
 * Bodies: every non-empty line of --body-file is one request body; requests rotate through
 * them. Responses are framed by Content-Length or chunked encoding.
 *
 *   gcc -O2 -o loadgen loadgen.c
 *   loadgen --url-host 127.0.0.1 --port 8080 --path /v2/models/m/infer --body-file bodies.jsonl \
 *           --header 'Authorization: Bearer x' --rate 2000 --connections 8 --duration 10 \
 *           --warmup 2 --json
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define MAX_HEADERS 32
#define MAX_HEADER_BYTES 65536

enum state { DOWN, IDLE, SENDING, RECEIVING };

typedef struct {
    char *data;
    size_t len;
} buf_t;

typedef struct {
    int fd;
    enum state state;
    int64_t next;  /* scheduled time of this connection's next request */
    int64_t sched; /* scheduled time of the request in flight */
    const buf_t *req;
    size_t sent;
    int want_out; /* EPOLLOUT is in the epoll mask (a write was partial) */
    char *rbuf;
    size_t rlen, rcap;
} conn_t;

static struct {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int ep;
    buf_t *reqs;
    size_t nreqs, next_req;
    int64_t interval, t_window, t_end;
    int64_t *lat;
    size_t nlat, lat_cap;
    long errors, non2xx;
    int inflight;
} g;

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) die("out of memory");
    return p;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static int in_window(int64_t sched) { return sched >= g.t_window && sched < g.t_end; }

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open --body-file");
    size_t cap = 1 << 16, n = 0, r;
    char *data = xrealloc(NULL, cap);
    while ((r = fread(data + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) data = xrealloc(data, cap *= 2);
    }
    fclose(f);
    *len = n;
    return data;
}

/* One prebuilt request per non-empty line of the body file. */
static void build_requests(const char *host, int port, const char *path, const char *body_file,
                           char **headers, int nheaders) {
    int has_ctype = 0;
    size_t extra_len = 0;
    for (int i = 0; i < nheaders; i++) {
        has_ctype |= strncasecmp(headers[i], "content-type:", 13) == 0;
        extra_len += strlen(headers[i]) + 2;
    }
    size_t flen;
    char *file = read_file(body_file, &flen);
    for (size_t pos = 0; pos < flen;) {
        char *nl = memchr(file + pos, '\n', flen - pos);
        size_t end = nl ? (size_t)(nl - file) : flen;
        size_t blen = end - pos;
        if (blen && file[end - 1] == '\r') blen--;
        if (blen) {
            size_t cap = strlen(path) + strlen(host) + extra_len + blen + 256;
            char *r = xrealloc(NULL, cap);
            const char *ctype = has_ctype ? "" : "Content-Type: application/json\r\n";
            int n = snprintf(r, cap, "POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %zu\r\n",
                             path, host, port, ctype, blen);
            for (int i = 0; i < nheaders; i++)
                n += snprintf(r + n, cap - n, "%s\r\n", headers[i]);
            n += snprintf(r + n, cap - n, "\r\n");
            memcpy(r + n, file + pos, blen);
            g.reqs = xrealloc(g.reqs, (g.nreqs + 1) * sizeof *g.reqs);
            g.reqs[g.nreqs++] = (buf_t){r, n + blen};
        }
        pos = end + 1;
    }
    free(file);
    if (!g.nreqs) die("--body-file holds no body");
}

static void watch(conn_t *c, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(g.ep, op, c->fd, &ev) < 0) die("epoll_ctl failed");
}

/* Blocking connect (loopback: immediate), then non-blocking for the run. */
static int conn_open(conn_t *c) {
    int fd = socket(g.addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&g.addr, g.addrlen) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    c->state = IDLE;
    c->rlen = 0;
    c->want_out = 0;
    watch(c, EPOLL_CTL_ADD, EPOLLIN);
    return 0;
}

static void conn_close(conn_t *c) {
    if (c->state == SENDING || c->state == RECEIVING) {
        g.inflight--;
        if (in_window(c->sched)) g.errors++;
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->state = DOWN;
}

static void conn_write(conn_t *c) {
    while (c->sent < c->req->len) {
        ssize_t n = send(c->fd, c->req->data + c->sent, c->req->len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (!c->want_out) watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                c->want_out = 1;
                return;
            }
            conn_close(c);
            return;
        }
        c->sent += n;
    }
    if (c->want_out) watch(c, EPOLL_CTL_MOD, EPOLLIN);
    c->want_out = 0;
    c->state = RECEIVING;
}

static void start_request(conn_t *c) {
    c->sched = c->next;
    c->next += g.interval;
    if (c->state == DOWN && conn_open(c) < 0) {
        if (in_window(c->sched)) g.errors++;
        return;
    }
    c->req = &g.reqs[g.next_req++ % g.nreqs];
    c->sent = 0;
    g.inflight++;
    c->state = SENDING;
    conn_write(c);
}

/* 1: a whole response is in rbuf (*used bytes, *status); 0: need more; -1: cannot frame it. */
static int parse_response(const conn_t *c, size_t *used, int *status, int *close_after) {
    const char *b = c->rbuf;
    const char *hend = memmem(b, c->rlen, "\r\n\r\n", 4);
    if (!hend) return c->rlen > MAX_HEADER_BYTES ? -1 : 0;
    size_t body = (size_t)(hend - b) + 4;
    if (c->rlen < 12 || strncmp(b, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(b + 9);
    long clen = -1;
    int chunked = 0;
    *close_after = strncmp(b, "HTTP/1.0", 8) == 0;
    const char *line = (const char *)memchr(b, '\n', body) + 1;
    for (; line < hend; line = (const char *)memchr(line, '\n', hend + 2 - line) + 1) {
        if (strncasecmp(line, "content-length:", 15) == 0) {
            clen = strtol(line + 15, NULL, 10);
        } else if (strncasecmp(line, "transfer-encoding:", 18) == 0) {
            const char *eol = memchr(line, '\r', hend + 2 - line);
            chunked = memmem(line, eol - line, "chunked", 7) != NULL;
        } else if (strncasecmp(line, "connection:", 11) == 0) {
            const char *eol = memchr(line, '\r', hend + 2 - line);
            *close_after = memmem(line, eol - line, "close", 5) != NULL;
        }
    }
    if (*status == 204 || *status == 304) clen = 0;
    if (clen >= 0) {
        if (c->rlen < body + (size_t)clen) return 0;
        *used = body + clen;
        return 1;
    }
    if (!chunked) return -1;
    size_t pos = body;
    for (;;) {
        const char *eol = memmem(b + pos, c->rlen - pos, "\r\n", 2);
        if (!eol) return 0;
        size_t size = strtoul(b + pos, NULL, 16);
        pos = (size_t)(eol - b) + 2;
        if (size == 0) { /* last chunk, then optional trailers up to an empty line */
            if (c->rlen >= pos + 2 && memcmp(b + pos, "\r\n", 2) == 0) {
                *used = pos + 2;
                return 1;
            }
            const char *end = memmem(b + pos, c->rlen - pos, "\r\n\r\n", 4);
            if (!end) return 0;
            *used = (size_t)(end - b) + 4;
            return 1;
        }
        if (c->rlen < pos + size + 2) return 0;
        pos += size + 2;
    }
}

/* Reads what is there; a response complete by then counts even if the peer closed after it.
 * A close with a request outstanding is an error; an idle keep-alive close is not. */
static void conn_read(conn_t *c) {
    int closed = 0;
    for (;;) {
        if (c->rcap - c->rlen < 16384) {
            c->rcap = c->rcap ? c->rcap * 2 : 65536;
            c->rbuf = xrealloc(c->rbuf, c->rcap);
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            closed = 1;
            break;
        }
        if (n < 0) break;
        c->rlen += n;
    }
    if (c->state == IDLE) { /* nothing was asked: discard */
        c->rlen = 0;
        if (closed) conn_close(c);
        return;
    }
    size_t used;
    int status, close_after;
    int r = parse_response(c, &used, &status, &close_after);
    if (r <= 0) {
        if (r < 0 || closed) conn_close(c);
        return;
    }
    int64_t now = now_ns();
    g.inflight--;
    if (in_window(c->sched)) {
        if (g.nlat == g.lat_cap) {
            g.lat_cap = g.lat_cap * 2 + 65536;
            g.lat = xrealloc(g.lat, g.lat_cap * sizeof *g.lat);
        }
        g.lat[g.nlat++] = now - c->sched;
        if (status < 200 || status > 299) g.non2xx++;
    }
    int was_sending = c->state == SENDING; /* answered before the body went out: resync */
    c->state = IDLE;
    memmove(c->rbuf, c->rbuf + used, c->rlen - used);
    c->rlen -= used;
    if (closed || close_after || was_sending) conn_close(c);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(double q) {
    size_t i = (size_t)(q * g.nlat + 0.999999);
    return g.lat[(i ? i : 1) - 1] / 1e6;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P --path PATH --body-file F --rate R [--url-host H]\n"
            "               [--header 'Name: value']... [--connections C] [--duration S]\n"
            "               [--warmup S] [--drain S] [--json]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = NULL, *body_file = NULL;
    char *headers[MAX_HEADERS];
    int nheaders = 0, port = 0, conns = 8, json = 0;
    double rate = 0, duration = 10, warmup = 2, drain = 2;
    static struct option opts[] = {
        {"url-host", 1, 0, 'h'}, {"port", 1, 0, 'p'},     {"path", 1, 0, 'P'},
        {"body-file", 1, 0, 'b'}, {"header", 1, 0, 'H'},  {"rate", 1, 0, 'r'},
        {"connections", 1, 0, 'c'}, {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},
        {"drain", 1, 0, 'D'},    {"json", 0, 0, 'j'},     {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'P': path = optarg; break;
        case 'b': body_file = optarg; break;
        case 'H':
            if (nheaders == MAX_HEADERS) die("too many --header");
            headers[nheaders++] = optarg;
            break;
        case 'r': rate = atof(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'D': drain = atof(optarg); break;
        case 'j': json = 1; break;
        default: usage();
        }
    }
    if (!port || !path || !body_file || rate <= 0 || conns < 1 || duration <= 0) usage();

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0) die("cannot resolve --url-host");
    memcpy(&g.addr, ai->ai_addr, ai->ai_addrlen);
    g.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);

    build_requests(host, port, path, body_file, headers, nheaders);
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake-ups on time, not up to 50 us late */
    g.ep = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g.ep, EPOLL_CTL_ADD, tfd, &tev);

    conn_t *cs = calloc(conns, sizeof *cs);
    for (int i = 0; i < conns; i++)
        if (conn_open(&cs[i]) < 0) die("cannot connect");

    g.interval = (int64_t)(conns * NS / rate);
    int64_t t0 = now_ns() + NS / 100;
    g.t_window = t0 + (int64_t)(warmup * NS);
    g.t_end = g.t_window + (int64_t)(duration * NS);
    int64_t t_stop = g.t_end + (int64_t)(drain * NS);
    for (int i = 0; i < conns; i++) cs[i].next = t0 + g.interval * i / conns;

    struct epoll_event evs[256];
    for (;;) {
        int64_t now = now_ns();
        if ((now >= g.t_end && g.inflight == 0) || now >= t_stop) break;
        int64_t wake = now >= g.t_end ? t_stop : g.t_end;
        for (int i = 0; i < conns; i++) {
            conn_t *c = &cs[i];
            if (c->state != IDLE && c->state != DOWN) continue;
            if (c->next <= now && c->next < g.t_end) start_request(c);
            if ((c->state == IDLE || c->state == DOWN) && c->next < g.t_end && c->next < wake)
                wake = c->next;
        }
        struct itimerspec its = {.it_value = {wake / NS, wake % NS}};
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        int n = epoll_wait(g.ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("timerfd read failed");
                continue;
            }
            if (c->state == DOWN) continue; /* closed earlier in this batch */
            if (c->state == SENDING && (evs[i].events & EPOLLOUT)) conn_write(c);
            if (c->state != DOWN && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) conn_read(c);
        }
    }

    long timeouts = 0, unsent = 0;
    for (int i = 0; i < conns; i++) {
        conn_t *c = &cs[i];
        if ((c->state == SENDING || c->state == RECEIVING) && in_window(c->sched)) timeouts++;
        int64_t from = c->next > g.t_window ? c->next : g.t_window;
        if (c->next < g.t_end) unsent += (g.t_end - from + g.interval - 1) / g.interval;
    }
    qsort(g.lat, g.nlat, sizeof *g.lat, cmp_i64);
    double sum = 0;
    for (size_t i = 0; i < g.nlat; i++) sum += g.lat[i];
    double achieved = g.nlat / duration;
    if (json) {
        printf("{\"target_rate\": %.1f, \"achieved_rate\": %.1f, \"duration_s\": %.3f, "
               "\"warmup_s\": %.3f, \"connections\": %d, \"bodies\": %zu, \"count\": %zu, "
               "\"errors\": %ld, \"non2xx\": %ld, \"timeouts\": %ld, \"unsent\": %ld, "
               "\"latency_ms\": ",
               rate, achieved, duration, warmup, conns, g.nreqs, g.nlat, g.errors, g.non2xx,
               timeouts, unsent);
        if (g.nlat)
            printf("{\"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f, \"p999\": %.4f, \"max\": %.4f, "
                   "\"mean\": %.4f}}\n",
                   pct_ms(.5), pct_ms(.9), pct_ms(.99), pct_ms(.999), pct_ms(1),
                   sum / g.nlat / 1e6);
        else
            printf("null}\n");
    } else {
        printf("target %.0f req/s, achieved %.1f req/s over %.1f s, %d connections\n", rate,
               achieved, duration, conns);
        printf("responses %zu, errors %ld, non-2xx %ld, timeouts %ld, unsent %ld\n", g.nlat,
               g.errors, g.non2xx, timeouts, unsent);
        if (g.nlat)
            printf("latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
                   pct_ms(.5), pct_ms(.9), pct_ms(.99), pct_ms(.999), pct_ms(1),
                   sum / g.nlat / 1e6);
    }
    return 0;
}
