/*
 * milterload: a small, fast MTA-side load driver for milter benchmarks.
 *
 * Why C: on a 2-core machine the driver shares the CPU with the milter under
 * test, so a Python driver (about 20 packets per message) would eat much of
 * what it measures. This one precomputes every packet once, runs one epoll
 * loop over N connections and reports its own CPU time, so its cost can be
 * read next to the figures.
 *
 * Traffic is Postfix-like: OPTNEG v6 offering everything, a MACRO packet
 * before each command (with Postfix's default macro names), CONNECT, HELO,
 * MAIL, RCPT x R, DATA, H headers, EOH, the body in chunks of at most 65535
 * bytes, EOM, then ABORT and QUIT. The filter's OPTNEG reply decides which
 * commands are sent (NO* bits) and which get no reply (NR_* bits), as an MTA
 * does. Latency is measured per message, from connect() (or from MAIL when
 * several messages share a connection) to the final reply to EOM.
 *
 * Usage: milterload HOST PORT CONNS SECONDS MESSAGES BODY HEADERS RCPTS PER_CONN
 *   SECONDS or MESSAGES may be 0 (then the other bounds the run).
 * Prints one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_STEPS 4096
#define READ_BUF 262144

/* protocol bits (PROTOCOL.md section 4.2) */
#define NOCONNECT 0x1
#define NOHELO 0x2
#define NOMAIL 0x4
#define NORCPT 0x8
#define NOBODY 0x10
#define NOHDRS 0x20
#define NOEOH 0x40
#define NR_HDR 0x80
#define NODATA 0x200
#define NR_CONN 0x1000
#define NR_HELO 0x2000
#define NR_MAIL 0x4000
#define NR_RCPT 0x8000
#define NR_DATA 0x10000
#define NR_EOH 0x40000
#define NR_BODY 0x80000

typedef struct {
    char *data;
    size_t len;
} buf_t;

typedef struct {
    size_t off, len;   /* bytes of this step in the script buffer */
    int replies;       /* 0: none, 1: one reply, 2: read until a final EOM reply */
    int starts_message;
} step_t;

typedef struct {
    buf_t bytes;
    step_t steps[MAX_STEPS];
    int nsteps;
} script_t;

typedef struct {
    int fd;
    int phase;          /* 0 = negotiating, 1 = running the script */
    int step;
    int msgs_done;
    size_t sent;        /* bytes of the current step already written */
    unsigned char rbuf[READ_BUF];
    size_t rlen;
    double t_start;
    uint32_t events;    /* the epoll mask registered now, to skip redundant epoll_ctl */
    script_t *script;
} conn_t;

static struct {
    const char *host, *port;
    int conns, messages, body, headers, rcpts, per_conn;
    double seconds;
} cfg;

static double *lat;
static long nlat, cap_lat;
static long errors, done_msgs, started_msgs;
static double t_begin, t_end_limit;
static int unix_mode;
static struct sockaddr_storage target;
static socklen_t target_len;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void put(buf_t *b, const void *p, size_t n) {
    b->data = realloc(b->data, b->len + n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_u32(buf_t *b, uint32_t v) {
    uint32_t n = htonl(v);
    put(b, &n, 4);
}

/* one packet: length, command byte, payload */
static void packet(buf_t *b, char cmd, const void *payload, size_t n) {
    put_u32(b, (uint32_t)(n + 1));
    put(b, &cmd, 1);
    if (n) put(b, payload, n);
}

static void macro(buf_t *b, char stage, const char *pairs[], int n) {
    buf_t p = {0};
    put(&p, &stage, 1);
    for (int i = 0; i < n; i++) put(&p, pairs[i], strlen(pairs[i]) + 1);
    packet(b, 'D', p.data, p.len);
    free(p.data);
}

static void add_step(script_t *s, size_t start, int replies, int starts_message) {
    step_t *st = &s->steps[s->nsteps++];
    st->off = start;
    st->len = s->bytes.len - start;
    st->replies = replies;
    st->starts_message = starts_message;
}

/* Append one command (with its macro packet) as a step, honouring NO and NR bits. */
static void command(script_t *s, uint32_t proto, uint32_t no, uint32_t nr, char stage,
                    const char *pairs[], int npairs, char cmd, const void *payload, size_t n,
                    int starts_message) {
    size_t start = s->bytes.len;
    macro(&s->bytes, stage, pairs, npairs);
    if (!(proto & no)) packet(&s->bytes, cmd, payload, n);
    int replies = (proto & no) || (nr && (proto & nr)) ? 0 : 1;
    add_step(s, start, replies, starts_message);
}

static void message_steps(script_t *s, uint32_t proto) {
    const char *mail_m[] = {"{mail_addr}", "sender@example.org", "{mail_host}", "example.org",
                            "{mail_mailer}", "smtp"};
    const char *rcpt_m[] = {"{rcpt_addr}", "rcpt@example.com", "{rcpt_host}", "example.com",
                            "{rcpt_mailer}", "smtp"};
    const char *qid[] = {"i", "4Bench1234"};
    char tmp[256];
    command(s, proto, NOMAIL, NR_MAIL, 'M', mail_m, 6, 'M', "<sender@example.org>\0SIZE=9000", 31, 1);
    for (int r = 0; r < cfg.rcpts; r++) {
        int n = snprintf(tmp, sizeof tmp, "<rcpt%d@example.com>", r);
        command(s, proto, NORCPT, NR_RCPT, 'R', rcpt_m, 6, 'R', tmp, n + 1, 0);
    }
    command(s, proto, NODATA, NR_DATA, 'T', qid, 2, 'T', NULL, 0, 0);
    static const char *names[] = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                                  "Content-Type", "X-Mailer", "Received", "X-Spam-Level"};
    for (int h = 0; h < cfg.headers; h++) {
        char p[512];
        int a = snprintf(p, sizeof p, "%s", names[h % 10]);
        int b = snprintf(p + a + 1, sizeof p - a - 1, "value of header number %d for the benchmark", h);
        command(s, proto, NOHDRS, NR_HDR, 'L', qid, 2, 'L', p, a + b + 2, 0);
    }
    command(s, proto, NOEOH, NR_EOH, 'N', qid, 2, 'N', NULL, 0, 0);
    char *body = malloc(cfg.body ? cfg.body : 1);
    for (int i = 0; i < cfg.body; i++) body[i] = (i % 72 == 70) ? '\r' : (i % 72 == 71) ? '\n' : 'a' + i % 26;
    for (int off = 0; off < cfg.body; off += 65535) {
        int n = cfg.body - off < 65535 ? cfg.body - off : 65535;
        command(s, proto, NOBODY, NR_BODY, 'B', qid, 2, 'B', body + off, n, 0);
    }
    free(body);
    size_t start = s->bytes.len;
    macro(&s->bytes, 'E', qid, 2);
    packet(&s->bytes, 'E', NULL, 0);
    add_step(s, start, 2, 0);
}

static script_t *build_script(uint32_t proto) {
    script_t *s = calloc(1, sizeof *s);
    const char *conn_m[] = {"j", "mx.bench.test", "{daemon_name}", "bench", "{daemon_addr}",
                            "127.0.0.1", "v", "Postfix 3.7.11", "_", "client [127.0.0.1]"};
    const char conn_p[] = "client.bench.test\0" "4\xC3\x50" "127.0.0.1";
    command(s, proto, NOCONNECT, NR_CONN, 'C', conn_m, 10, 'C', conn_p, sizeof conn_p, 0);
    command(s, proto, NOHELO, NR_HELO, 'H', NULL, 0, 'H', "client.bench.test", 18, 0);
    for (int m = 0; m < cfg.per_conn; m++) {
        message_steps(s, proto);
        size_t start = s->bytes.len;
        packet(&s->bytes, 'A', NULL, 0);
        add_step(s, start, 0, 0);
    }
    size_t start = s->bytes.len;
    packet(&s->bytes, 'Q', NULL, 0);
    add_step(s, start, 0, 0);
    return s;
}

static script_t *scripts[8];
static uint32_t script_proto[8];
static int nscripts;

static script_t *script_for(uint32_t proto) {
    for (int i = 0; i < nscripts; i++)
        if (script_proto[i] == proto) return scripts[i];
    if (nscripts == 8) return build_script(proto);
    script_proto[nscripts] = proto;
    return scripts[nscripts++] = build_script(proto);
}

static void record_latency(double v) {
    if (nlat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 65536;
        lat = realloc(lat, cap_lat * sizeof *lat);
    }
    lat[nlat++] = v;
}

static int epfd;

static int want_more(void) {
    if (cfg.messages && started_msgs >= cfg.messages) return 0;
    if (cfg.seconds > 0 && now() >= t_end_limit) return 0;
    return 1;
}

static void close_conn(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

static int open_conn(conn_t *c) {
    if (!want_more()) return 0;
    c->fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return -1;
    if (!unix_mode) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->t_start = now();
    if (connect(c->fd, (struct sockaddr *)&target, target_len) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->phase = 0;
    c->step = 0;
    c->msgs_done = 0;
    c->rlen = 0;
    c->sent = 0;
    started_msgs += cfg.per_conn;
    static const unsigned char optneg[] = {0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 1, 0xFF,
                                           0, 0x1F, 0xFF, 0xFF};
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->events = ev.events;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    /* connect on loopback completes at once or soon; OPTNEG is written on EPOLLOUT */
    (void)optneg;
    return 1;
}

static int write_all(conn_t *c, const char *p, size_t n) {
    while (c->sent < n) {
        ssize_t w = write(c->fd, p + c->sent, n - c->sent);
        if (w < 0) {
            if (errno == EAGAIN) return 0;
            return -1;
        }
        c->sent += w;
    }
    return 1;
}

static void set_events(conn_t *c, uint32_t events) {
    if (c->events == events) return;
    c->events = events;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send steps until one needs a reply; returns -1 on error. */
static int advance(conn_t *c) {
    script_t *s = c->script;
    while (c->step < s->nsteps) {
        step_t *st = &s->steps[c->step];
        if (st->starts_message && cfg.per_conn > 1 && c->sent == 0) c->t_start = now();
        int r = write_all(c, s->bytes.data + st->off, st->len);
        if (r < 0) return -1;
        if (r == 0) {
            set_events(c, EPOLLIN | EPOLLOUT);
            return 0;
        }
        if (st->replies) {
            set_events(c, EPOLLIN);
            return 0;
        }
        c->sent = 0;
        c->step++;
    }
    return 1; /* script finished */
}

static void fail(conn_t *c) {
    errors++;
    close_conn(c);
}

/* Consume complete reply packets; returns 1 when the awaited reply is complete. */
static int take_replies(conn_t *c) {
    step_t *st = &c->script->steps[c->step];
    size_t pos = 0;
    int complete = 0;
    while (!complete && c->rlen - pos >= 5) {
        uint32_t len;
        memcpy(&len, c->rbuf + pos, 4);
        len = ntohl(len);
        if (len == 0 || len > READ_BUF - 4) return -1;
        if (c->rlen - pos < 4 + len) break;
        char code = c->rbuf[pos + 4];
        pos += 4 + len;
        if (st->replies == 1 && code != 'p') complete = 1;
        if (st->replies == 2 && strchr("acrtdy", code)) complete = 1;
    }
    memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
    c->rlen -= pos;
    return complete;
}

static void on_message_done(conn_t *c) {
    record_latency(now() - c->t_start);
    done_msgs++;
    c->msgs_done++;
}

static void handle_negotiation(conn_t *c) {
    if (c->rlen < 17) return;
    if (c->rbuf[4] != 'O') {
        fail(c);
        return;
    }
    uint32_t proto;
    memcpy(&proto, c->rbuf + 13, 4);
    proto = ntohl(proto);
    uint32_t len;
    memcpy(&len, c->rbuf, 4);
    len = ntohl(len);
    if (c->rlen < 4 + len) return;
    memmove(c->rbuf, c->rbuf + 4 + len, c->rlen - 4 - len);
    c->rlen -= 4 + len;
    c->script = script_for(proto);
    c->phase = 1;
    c->sent = 0;
}

static void on_readable(conn_t *c) {
    ssize_t n = read(c->fd, c->rbuf + c->rlen, READ_BUF - c->rlen);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN) return;
        if (c->phase == 1 && c->step >= c->script->nsteps - 1) {
            close_conn(c); /* filter closed after QUIT */
            return;
        }
        fail(c);
        return;
    }
    c->rlen += n;
    if (c->phase == 0) {
        handle_negotiation(c);
        if (c->fd < 0 || c->phase == 0) return;
    } else {
        int r = take_replies(c);
        if (r < 0) {
            fail(c);
            return;
        }
        if (r == 0) return;
        if (c->script->steps[c->step].replies == 2) on_message_done(c);
        c->sent = 0;
        c->step++;
    }
    int r = advance(c);
    if (r < 0) fail(c);
    if (r == 1) close_conn(c);
}

static void on_writable(conn_t *c) {
    if (c->phase == 0 && c->rlen == 0 && c->sent < 17) {
        static const unsigned char optneg[] = {0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 1, 0xFF,
                                               0, 0x1F, 0xFF, 0xFF};
        int r = write_all(c, (const char *)optneg, sizeof optneg);
        if (r < 0) {
            fail(c);
            return;
        }
        if (r == 1) {
            c->sent = 17;
            set_events(c, EPOLLIN);
        }
        return;
    }
    if (c->phase == 1) {
        int r = advance(c);
        if (r < 0) fail(c);
        if (r == 1) close_conn(c);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double p) {
    if (!nlat) return 0;
    long i = (long)(p / 100.0 * (nlat - 1) + 0.5);
    return lat[i] * 1000.0;
}

static int resolve(void) {
    if (cfg.host[0] == '/') {
        struct sockaddr_un *un = (struct sockaddr_un *)&target;
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof un->sun_path, "%s", cfg.host);
        target_len = sizeof *un;
        unix_mode = 1;
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(cfg.host, cfg.port, &hints, &res)) return -1;
    memcpy(&target, res->ai_addr, res->ai_addrlen);
    target_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s HOST|/unix/path PORT CONNS SECONDS MESSAGES BODY HEADERS RCPTS PER_CONN\n", argv[0]);
        return 64;
    }
    cfg.host = argv[1];
    cfg.port = argv[2];
    cfg.conns = atoi(argv[3]);
    cfg.seconds = atof(argv[4]);
    cfg.messages = atoi(argv[5]);
    cfg.body = atoi(argv[6]);
    cfg.headers = atoi(argv[7]);
    cfg.rcpts = atoi(argv[8]);
    cfg.per_conn = atoi(argv[9]) > 0 ? atoi(argv[9]) : 1;
    if (resolve() < 0) {
        fprintf(stderr, "milterload: cannot resolve %s\n", cfg.host);
        return 69;
    }
    epfd = epoll_create1(0);
    conn_t *conns = calloc(cfg.conns, sizeof *conns);
    t_begin = now();
    t_end_limit = t_begin + cfg.seconds;
    int active = 0;
    for (int i = 0; i < cfg.conns; i++) {
        conns[i].fd = -1;
        if (open_conn(&conns[i]) > 0) active++;
    }
    struct epoll_event evs[256];
    double hard_stop = t_begin + (cfg.seconds > 0 ? cfg.seconds : 600) + 30;
    while (active > 0 && now() < hard_stop) {
        int n = epoll_wait(epfd, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) fail(c);
            else if (evs[i].events & EPOLLIN) on_readable(c);
            else if (evs[i].events & EPOLLOUT) on_writable(c);
        }
        active = 0;
        for (int i = 0; i < cfg.conns; i++) {
            if (conns[i].fd < 0) open_conn(&conns[i]);
            if (conns[i].fd >= 0) active++;
        }
    }
    double elapsed = now() - t_begin;
    qsort(lat, nlat, sizeof *lat, cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"messages\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"msgs_per_s\": %.1f, "
           "\"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
           "\"driver_cpu_s\": %.3f, \"unfinished\": %d}\n",
           done_msgs, errors, elapsed, done_msgs / elapsed, pct(50), pct(90), pct(99),
           nlat ? lat[nlat - 1] * 1000.0 : 0, cpu, active);
    return 0;
}
