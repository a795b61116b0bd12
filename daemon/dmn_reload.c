/* daemon: SIGHUP — re-reads what may change without a restart, one call per part, each of which
 * logs its own failure and keeps what it had. Nothing drains or stops: open calls go on. */
#include "daemon/dmn.h"
#include "daemon/dmn_http.h"
#include "daemon/dmn_tls.h"

#include <stdio.h>
#include <string.h>

/* Appends "name: what" to the summary (a "; " between parts). */
static void add_part(char *buf, size_t len, const char *name, const char *what)
{
    size_t n = strlen(buf);
    if (n < len) snprintf(buf + n, len - n, "%s%s: %s", n ? "; " : "", name, what);
}

static int reload_tls(dmn_server_t *s, char *done, size_t len)
{
    char what[600], err[600];
    if (!s->tls) return 0;
    if (dmn_tls_reload(s->tls, what, sizeof(what), err, sizeof(err))) {
        dmn_log(DMN_ERROR, "reload", NULL, NULL, "tls: %s; keeping the previous certificate", err);
        return -1;
    }
    add_part(done, len, "tls", what);
    /* HTTPS serves the same files, checked just now: it reloads them only when gRPC did */
    if (dmn_http_reload_tls(s, what, sizeof(what), err, sizeof(err))) {
        dmn_log(DMN_ERROR, "https_reload", NULL, NULL, "%s; HTTPS keeps the previous certificate",
                err);
        return -1;
    }
    if (dmn_http_port(s)) add_part(done, len, "https", what);
    return 0;
}

void dmn_reload(dmn_server_t *s)
{
    char done[1500] = "";
    int failed = 0;
    failed += reload_tls(s, done, sizeof(done)) != 0;
    if (s->keys) { /* started without keys: a reload does not turn them on */
        if (dmn_auth_reload(s) == 0) add_part(done, sizeof(done), "api keys", s->opts->api_keys);
        else failed++;
    }
    /* further parts go here, one call each */
    if (done[0])
        dmn_log(DMN_INFO, "reload", NULL, NULL, "SIGHUP: reloaded %s%s", done,
                failed ? " (a part failed: see above)" : "");
    else if (!failed)
        dmn_log(DMN_INFO, "reload", NULL, NULL, "SIGHUP: nothing to reload");
}
