/* daemon: Prometheus metrics — the registry the daemon's parts update, and the exposition
 * (`GET /metrics` on the HTTP listener). */
#ifndef DMN_METRICS_H
#define DMN_METRICS_H

#include <stdbool.h>
#include <stddef.h>

struct dmn_server;

/* Renders every metric: the Prometheus text format 0.0.4, or OpenMetrics 1.0.0 (ending with
 * "# EOF") when openmetrics. 0 and *out (malloc'd, *len bytes), or RCD_ENOMEM. Loop thread. */
int dmn_metrics_render(struct dmn_server *s, bool openmetrics, char **out, size_t *len);

#endif
