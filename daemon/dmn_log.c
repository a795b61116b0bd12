/* daemon: JSON-lines logger. Lines are written with one fwrite so threads never interleave. */
#include "daemon/dmn_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/rcd_error.h"

static dmn_level_t g_level = DMN_INFO;
static const char *const g_names[] = {"debug", "info", "warn", "error"};

int dmn_log_set_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, g_names[i]) == 0) {
            g_level = (dmn_level_t)i;
            return 0;
        }
    return RCD_EINVAL;
}

void dmn_json_escape(char *buf, size_t cap, size_t *pos, const char *s)
{
    size_t p = *pos;
    for (; s && *s && p + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[p++] = '\\';
            buf[p++] = (char)c;
        } else if (c == '\n') {
            buf[p++] = '\\';
            buf[p++] = 'n';
        } else if (c < 0x20) {
            p += (size_t)snprintf(buf + p, cap - p, "\\u%04x", c);
        } else {
            buf[p++] = (char)c;
        }
    }
    buf[p < cap ? p : cap - 1] = 0;
    *pos = p;
}

static void put(char *buf, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    if (*pos + n + 1 < cap) {
        memcpy(buf + *pos, s, n + 1);
        *pos += n;
    }
}

static void vlog(dmn_level_t lvl, const char *event, const char *rid, const char *sid,
                 const char *const *kv, const char *fmt, va_list ap)
{
    char msg[1024], line[4096];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t p = (size_t)snprintf(line, sizeof(line),
                                "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
                                "\"event\":\"",
                                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                                tm.tm_sec, ts.tv_nsec / 1000000, g_names[lvl]);
    dmn_json_escape(line, sizeof(line), &p, event);
    put(line, sizeof(line), &p, "\"");
    if (rid && *rid) {
        put(line, sizeof(line), &p, ",\"request_id\":\"");
        dmn_json_escape(line, sizeof(line), &p, rid);
        put(line, sizeof(line), &p, "\"");
    }
    if (sid && *sid) {
        put(line, sizeof(line), &p, ",\"session_id\":\"");
        dmn_json_escape(line, sizeof(line), &p, sid);
        put(line, sizeof(line), &p, "\"");
    }
    for (; kv && kv[0]; kv += 2) {
        if (!kv[1]) continue;
        put(line, sizeof(line), &p, ",\"");
        dmn_json_escape(line, sizeof(line), &p, kv[0]);
        put(line, sizeof(line), &p, "\":\"");
        dmn_json_escape(line, sizeof(line), &p, kv[1]);
        put(line, sizeof(line), &p, "\"");
    }
    put(line, sizeof(line), &p, ",\"msg\":\"");
    dmn_json_escape(line, sizeof(line), &p, msg);
    put(line, sizeof(line), &p, "\"}\n");
    fwrite(line, 1, strlen(line), stderr);
}

void dmn_log(dmn_level_t lvl, const char *event, const char *rid, const char *sid, const char *fmt,
             ...)
{
    if (lvl < g_level) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, event, rid, sid, NULL, fmt, ap);
    va_end(ap);
}

void dmn_log_kv(dmn_level_t lvl, bool always, const char *event, const char *rid, const char *sid,
                const char *const *kv, const char *fmt, ...)
{
    if (lvl < g_level && !always) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, event, rid, sid, kv, fmt, ap);
    va_end(ap);
}
