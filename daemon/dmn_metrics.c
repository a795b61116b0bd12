/* daemon: the /metrics exposition (a first cut: build info; the registry follows). */
#include "daemon/dmn_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "daemon/dmn.h"

int dmn_metrics_render(struct dmn_server *s, bool openmetrics, char **out, size_t *len)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "# HELP recurd_build_info recurd's version and model (always 1).\n"
                     "# TYPE %s %s\n"
                     "recurd_build_info{version=\"%s\",model=\"%s\"} 1\n%s",
                     openmetrics ? "recurd_build" : "recurd_build_info",
                     openmetrics ? "info" : "gauge", RCD_VERSION, s ? s->model_id : "",
                     openmetrics ? "# EOF\n" : "");
    if (n < 0 || (size_t)n >= sizeof buf) return RCD_EINTERNAL;
    *out = malloc((size_t)n + 1);
    if (!*out) return RCD_ENOMEM;
    memcpy(*out, buf, (size_t)n + 1);
    *len = (size_t)n;
    return 0;
}
