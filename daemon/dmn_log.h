/* daemon: structured logs — one JSON object per line on stderr, with a level, an event name,
 * and the request and session ids where one exists. */
#ifndef DMN_LOG_H
#define DMN_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum dmn_level { DMN_DEBUG, DMN_INFO, DMN_WARN, DMN_ERROR } dmn_level_t;

int dmn_log_set_level(const char *name); /* "debug".."error"; RCD_EINVAL otherwise */

/* Logs {"ts":..,"level":..,"event":event,"request_id":rid,"session_id":sid,"msg":...}.
 * rid/sid may be NULL or "". The message is printf-formatted and JSON-escaped. */
void dmn_log(dmn_level_t lvl, const char *event, const char *rid, const char *sid, const char *fmt,
             ...) __attribute__((format(printf, 5, 6)));

/* dmn_log with extra string fields after session_id: kv is {"key", "value", ..., NULL} (a
 * NULL value skips its key). `always`: written whatever the log level (audit lines). */
void dmn_log_kv(dmn_level_t lvl, bool always, const char *event, const char *rid, const char *sid,
                const char *const *kv, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* Appends s JSON-escaped (without quotes) to buf at *pos, never past cap-1. */
void dmn_json_escape(char *buf, size_t cap, size_t *pos, const char *s);

#endif
