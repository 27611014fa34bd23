/*
 * ref_filter.c - reference milter built on Debian's libmilter.
 *
 * Used by the milterkit integration tests as the "known good" filter side:
 * our MTA-side code is driven against it, and our filter-side results are
 * compared with what real libmilter produces.  Behaviour is selected by the
 * envelope addresses and by words in the Subject header:
 *   MAIL <discard@..> -> DISCARD;  RCPT <reject@..> -> 550 5.7.1 "ref: rejected",
 *   RCPT <multi@..> -> two-line 550 5.7.0, RCPT <temp@..> -> TEMPFAIL;
 *   body chunk containing "SKIPME" -> SKIP;
 *   EOM: always adds "X-Ref: yes"; Subject words insert, change, delete, body,
 *   from, addrcpt, delrcpt, quarantine, progress trigger the matching smfi_*
 *   call; "accept" makes the EOM reply ACCEPT instead of CONTINUE.
 *
 * Usage: ref_filter SOCKET_SPEC   (e.g. inet:9999@127.0.0.1, unix:/tmp/s)
 * Prints "READY" on stdout once the listening socket is open.
 * Set REF_FILTER_VERBOSE=1 to trace callbacks on stderr.
 */
#include <libmilter/mfapi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define REPL_BODY_SIZE 70000 /* > 65535, so libmilter sends two 'b' packets */

struct refpriv {
    char subject[1024]; /* Subject header of the current message */
};

static int verbose;

static void trace(const char *fmt, ...)
{
    va_list ap;

    if (!verbose)
        return;
    va_start(ap, fmt);
    fputs("ref_filter: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static struct refpriv *priv(SMFICTX *ctx)
{
    return (struct refpriv *)smfi_getpriv(ctx);
}

static void reset_message(SMFICTX *ctx)
{
    struct refpriv *p = priv(ctx);

    if (p != NULL)
        p->subject[0] = '\0';
}

static int subject_has(SMFICTX *ctx, const char *word)
{
    struct refpriv *p = priv(ctx);

    return p != NULL && strstr(p->subject, word) != NULL;
}

static sfsistat ref_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                              unsigned long f2, unsigned long f3,
                              unsigned long *pf0, unsigned long *pf1,
                              unsigned long *pf2, unsigned long *pf3)
{
    unsigned long want = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY |
                         SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT |
                         SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_SETSYMLIST;

    (void)f2;
    (void)f3;
    trace("negotiate actions=0x%lx protocol=0x%lx", f0, f1);
    *pf0 = want & f0;           /* never ask for more than offered */
    *pf1 = f1 & SMFIP_SKIP;     /* all steps, all replies; SKIP if offered */
    *pf2 = 0;
    *pf3 = 0;
    if (f0 & SMFIF_SETSYMLIST)
        smfi_setsymlist(ctx, SMFIM_CONNECT, "j {daemon_name}");
    return SMFIS_CONTINUE;
}

static sfsistat ref_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
    struct refpriv *p = calloc(1, sizeof(*p));

    (void)addr;
    trace("connect %s j=%s", host, smfi_getsymval(ctx, "j") ? smfi_getsymval(ctx, "j") : "-");
    if (p == NULL)
        return SMFIS_TEMPFAIL;
    smfi_setpriv(ctx, p);
    return SMFIS_CONTINUE;
}

static sfsistat ref_helo(SMFICTX *ctx, char *helo)
{
    (void)ctx;
    trace("helo %s", helo);
    return SMFIS_CONTINUE;
}

static sfsistat ref_envfrom(SMFICTX *ctx, char **argv)
{
    trace("mail %s", argv[0]);
    reset_message(ctx);
    if (strncasecmp(argv[0], "<discard@", 9) == 0)
        return SMFIS_DISCARD;
    return SMFIS_CONTINUE;
}

static sfsistat ref_envrcpt(SMFICTX *ctx, char **argv)
{
    const char *rcpt = argv[0];

    trace("rcpt %s", rcpt);
    if (strncasecmp(rcpt, "<reject@", 8) == 0) {
        smfi_setreply(ctx, "550", "5.7.1", "ref: rejected");
        return SMFIS_REJECT;
    }
    if (strncasecmp(rcpt, "<multi@", 7) == 0) {
        smfi_setmlreply(ctx, "550", "5.7.0", "ref: first line", "ref: second line", NULL);
        return SMFIS_REJECT;
    }
    if (strncasecmp(rcpt, "<temp@", 6) == 0)
        return SMFIS_TEMPFAIL;
    return SMFIS_CONTINUE;
}

static sfsistat ref_data(SMFICTX *ctx)
{
    (void)ctx;
    trace("data");
    return SMFIS_CONTINUE;
}

static sfsistat ref_header(SMFICTX *ctx, char *name, char *value)
{
    struct refpriv *p = priv(ctx);

    trace("header %s: %s", name, value);
    if (p != NULL && strcasecmp(name, "Subject") == 0)
        snprintf(p->subject, sizeof(p->subject), "%s", value);
    return SMFIS_CONTINUE;
}

static sfsistat ref_eoh(SMFICTX *ctx)
{
    (void)ctx;
    trace("eoh");
    return SMFIS_CONTINUE;
}

static sfsistat ref_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
    static const char marker[] = "SKIPME";
    size_t i;

    (void)ctx;
    trace("body %zu bytes", len);
    for (i = 0; i + sizeof(marker) - 1 <= len; i++) {
        if (memcmp(chunk + i, marker, sizeof(marker) - 1) == 0)
            return SMFIS_SKIP;
    }
    return SMFIS_CONTINUE;
}

static void replace_body(SMFICTX *ctx)
{
    static unsigned char buf[REPL_BODY_SIZE];
    static const char line[] = "ref replaced body line 0123456789 abcdefghijklmnopqrstuvwxyz .....\r\n";
    size_t n = sizeof(line) - 1, off;

    for (off = 0; off < sizeof(buf); off += n)
        memcpy(buf + off, line, off + n <= sizeof(buf) ? n : sizeof(buf) - off);
    smfi_replacebody(ctx, buf, (int)sizeof(buf));
}

static void eom_modifications(SMFICTX *ctx)
{
    smfi_addheader(ctx, "X-Ref", "yes");
    if (subject_has(ctx, "insert"))
        smfi_insheader(ctx, 0, "X-Top", "top");
    if (subject_has(ctx, "change"))
        smfi_chgheader(ctx, "Subject", 1, "changed");
    if (subject_has(ctx, "delete"))
        smfi_chgheader(ctx, "X-Del", 1, NULL);
    if (subject_has(ctx, "body"))
        replace_body(ctx);
    if (subject_has(ctx, "from"))
        smfi_chgfrom(ctx, "<new@example.org>", "RET=HDRS");
    if (subject_has(ctx, "addrcpt")) {
        smfi_addrcpt(ctx, "<added@example.com>");
        smfi_addrcpt_par(ctx, "<par@example.com>", "NOTIFY=NEVER");
    }
    if (subject_has(ctx, "delrcpt"))
        smfi_delrcpt(ctx, "<bob@example.com>");
    if (subject_has(ctx, "quarantine"))
        smfi_quarantine(ctx, "ref quarantine");
    if (subject_has(ctx, "progress"))
        smfi_progress(ctx);
}

static sfsistat ref_eom(SMFICTX *ctx)
{
    int accept = subject_has(ctx, "accept");

    trace("eom subject=%s", priv(ctx) ? priv(ctx)->subject : "");
    eom_modifications(ctx);
    reset_message(ctx);
    return accept ? SMFIS_ACCEPT : SMFIS_CONTINUE;
}

static sfsistat ref_abort(SMFICTX *ctx)
{
    trace("abort");
    reset_message(ctx);
    return SMFIS_CONTINUE;
}

static sfsistat ref_close(SMFICTX *ctx)
{
    trace("close");
    free(priv(ctx));
    smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static sfsistat ref_unknown(SMFICTX *ctx, const char *cmd)
{
    (void)ctx;
    trace("unknown %s", cmd);
    return SMFIS_CONTINUE;
}

static struct smfiDesc ref_desc = {
    "ref_filter",
    SMFI_VERSION,
    SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT |
        SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT | SMFIF_QUARANTINE | SMFIF_CHGFROM |
        SMFIF_SETSYMLIST,
    ref_connect, ref_helo, ref_envfrom, ref_envrcpt, ref_header, ref_eoh,
    ref_body, ref_eom, ref_abort, ref_close, ref_unknown, ref_data,
    ref_negotiate,
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET_SPEC\n", argv[0]);
        return 2;
    }
    verbose = getenv("REF_FILTER_VERBOSE") != NULL;
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(ref_desc) == MI_FAILURE) {
        fprintf(stderr, "ref_filter: setconn/register failed\n");
        return 1;
    }
    if (smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "ref_filter: cannot open %s\n", argv[1]);
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
