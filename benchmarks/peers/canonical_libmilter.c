/*
 * The canonical benchmark milter on Sendmail's C libmilter (the reference).
 *
 * It asks for every step (connect, helo, mail, rcpt, data, header, eoh,
 * body), answers CONTINUE to each, and at end of message adds one header
 * and accepts. Only UNKNOWN is left out (its callback is NULL, so libmilter
 * negotiates SMFIP_NOUNKNOWN), as in the other canonical milters.
 *
 * libmilter does not set TCP_NODELAY, and it writes a modification and the
 * final reply of end of message as two small writes: with Nagle on, the
 * second waits for the MTA's delayed ACK (40 ms on Linux), so the benchmark
 * would measure that timer, not the library. Linux copies TCP_NODELAY from a
 * listening socket to the sockets it accepts, so main() sets it on the
 * listener that smfi_opensocket() created (libmilter gives no handle to it).
 *
 * Options after PORT (benchmarks/postfix.py uses them):
 *   nagle     leave Nagle on, as a libmilter filter runs by default
 *   minimal   register only the end-of-message callback (and abort/close):
 *             the same filter written with the one callback that does
 *             something; libmilter then negotiates the NO* bits for the rest.
 *
 * Build: gcc -O2 -o canonical_libmilter canonical_libmilter.c -lmilter -lpthread
 * Usage: canonical_libmilter PORT [nagle] [minimal]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <libmilter/mfapi.h>

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) {
    (void)ctx, (void)host, (void)addr;
    return SMFIS_CONTINUE;
}

static sfsistat on_helo(SMFICTX *ctx, char *name) {
    (void)ctx, (void)name;
    return SMFIS_CONTINUE;
}

static sfsistat on_mail(SMFICTX *ctx, char **argv) {
    (void)ctx, (void)argv;
    return SMFIS_CONTINUE;
}

static sfsistat on_rcpt(SMFICTX *ctx, char **argv) {
    (void)ctx, (void)argv;
    return SMFIS_CONTINUE;
}

static sfsistat on_data(SMFICTX *ctx) {
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value) {
    (void)ctx, (void)name, (void)value;
    return SMFIS_CONTINUE;
}

static sfsistat on_eoh(SMFICTX *ctx) {
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
    (void)ctx, (void)chunk, (void)len;
    return SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx) {
    if (smfi_addheader(ctx, "X-Bench", "libmilter") != MI_SUCCESS) return SMFIS_TEMPFAIL;
    return SMFIS_ACCEPT;
}

static sfsistat on_abort(SMFICTX *ctx) {
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx) {
    (void)ctx;
    return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "canonical",   /* filter name */
    SMFI_VERSION,  /* version code */
    SMFIF_ADDHDRS, /* flags */
    on_connect,    /* connection info filter */
    on_helo,       /* SMTP HELO command filter */
    on_mail,       /* envelope sender filter */
    on_rcpt,       /* envelope recipient filter */
    on_header,     /* header filter */
    on_eoh,        /* end of header */
    on_body,       /* body block filter */
    on_eom,        /* end of message */
    on_abort,      /* message aborted */
    on_close,      /* connection cleanup */
    NULL,          /* unknown SMTP commands */
    on_data,       /* DATA command */
    NULL,          /* negotiation: libmilter derives NO* bits from the NULL callbacks */
};

/* Set TCP_NODELAY on every listening TCP socket of this process. */
static int nodelay_on_listeners(void) {
    int found = 0;
    for (int fd = 3; fd < 1024; fd++) {
        int listening = 0, one = 1;
        socklen_t len = sizeof listening;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening) continue;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0) found++;
    }
    return found;
}

/* Drop every step callback but end of message (see "minimal" above). */
static void keep_only_eom(void) {
    desc.xxfi_connect = NULL;
    desc.xxfi_helo = NULL;
    desc.xxfi_envfrom = NULL;
    desc.xxfi_envrcpt = NULL;
    desc.xxfi_header = NULL;
    desc.xxfi_eoh = NULL;
    desc.xxfi_body = NULL;
    desc.xxfi_data = NULL;
}

int main(int argc, char **argv) {
    int nagle = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "nagle") == 0) {
            nagle = 1;
        } else if (strcmp(argv[i], "minimal") == 0) {
            keep_only_eom();
        } else {
            argc = 0;
        }
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [nagle] [minimal]\n", argv[0]);
        return 64;
    }
    char conn[64];
    snprintf(conn, sizeof conn, "inet:%s@127.0.0.1", argv[1]);
    if (smfi_setconn(conn) == MI_FAILURE || smfi_setbacklog(1024) == MI_FAILURE ||
        smfi_register(desc) == MI_FAILURE || smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "canonical_libmilter: setup failed\n");
        return 1;
    }
    if (!nagle && nodelay_on_listeners() == 0) fprintf(stderr, "canonical_libmilter: no listener for TCP_NODELAY\n");
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
