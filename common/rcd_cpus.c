/* common: the CPUs this process can count on (rcd_cpus.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rcd_cpus.h"
#include "common/rcd_path.h"

/* The quota in CPUs that directory `dir` sets (v2: cpu.max; v1: cpu.cfs_quota_us over
 * cpu.cfs_period_us), or 0. */
static double read_quota(const char *dir, int v2)
{
    char path[RCD_PATH_MAX], buf[128];
    if (rcd_path_join(path, sizeof path, dir, v2 ? "cpu.max" : "cpu.cfs_quota_us")) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    double q = 0, p = 0;
    if (v2) {
        char qs[32];
        if (sscanf(buf, "%31s %lf", qs, &p) != 2 || strcmp(qs, "max") == 0) return 0;
        char *end;
        q = strtod(qs, &end);
        if (end == qs) return 0;
    } else {
        if (sscanf(buf, "%lf", &q) != 1 || q <= 0) return 0;
        if (rcd_path_join(path, sizeof path, dir, "cpu.cfs_period_us")) return 0;
        if (!(f = fopen(path, "r"))) return 0;
        int ok = fscanf(f, "%lf", &p) == 1;
        fclose(f);
        if (!ok) return 0;
    }
    return q > 0 && p > 0 && isfinite(q / p) ? q / p : 0;
}

/* The tightest quota from mount `base` down the cgroup path `cg` ("/a/b"): the mount itself
 * (a container's own cgroup, its path in /proc/self/cgroup being the host's), then /a, /a/b. */
static double walk(const char *base, const char *cg, int v2, double best)
{
    char dir[RCD_PATH_MAX];
    size_t len = strlen(cg);
    for (size_t i = 0; i <= len; i++) {
        if (i < len && cg[i] != '/') continue;
        if (i > 0 && cg[i - 1] == '/') continue; /* "/" itself or a doubled slash */
        char part[RCD_PATH_MAX];
        if (i >= sizeof part) break;
        memcpy(part, cg, i);
        part[i] = 0;
        if (rcd_path_join(dir, sizeof dir, base, part)) break;
        double q = read_quota(dir, v2);
        if (q > 0 && (best == 0 || q < best)) best = q;
    }
    return best;
}

double rcd_cpu_quota(const char *root)
{
    char path[RCD_PATH_MAX], line[1024], base[RCD_PATH_MAX];
    if (rcd_path_fmt(path, sizeof path, "%s/proc/self/cgroup", root ? root : "")) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    double best = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = *c2 = 0;
        const char *ctrls = c1 + 1, *cg = c2 + 1;
        if (strcmp(line, "0") == 0 && !*ctrls) { /* v2 */
            if (rcd_path_fmt(base, sizeof base, "%s/sys/fs/cgroup", root ? root : "") == 0)
                best = walk(base, cg, 1, best);
            continue;
        }
        /* v1: the cpu controller, mounted under its list's name ("cpu,cpuacct") or "cpu" */
        char list[256];
        snprintf(list, sizeof list, ",%s,", ctrls);
        if (!strstr(list, ",cpu,")) continue;
        if (rcd_path_fmt(base, sizeof base, "%s/sys/fs/cgroup/%s", root ? root : "", ctrls) == 0)
            best = walk(base, cg, 0, best);
        if (strcmp(ctrls, "cpu") != 0 &&
            rcd_path_fmt(base, sizeof base, "%s/sys/fs/cgroup/cpu", root ? root : "") == 0)
            best = walk(base, cg, 0, best);
    }
    fclose(f);
    return best;
}

int rcd_cpus_available(char *why, size_t whylen)
{
    int n = 0;
    const char *src = "affinity mask";
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n < 1) {
        long o = sysconf(_SC_NPROCESSORS_ONLN);
        n = o > 0 ? (int)o : 1;
        src = "online CPUs";
    }
    double q = rcd_cpu_quota("");
    if (q > 0 && ceil(q) < n) {
        if (why) snprintf(why, whylen, "cgroup CPU quota %.2f (of %d CPUs in the %s)", q, n, src);
        n = (int)ceil(q);
    } else if (why) {
        snprintf(why, whylen, "%s", src);
    }
    return n < 1 ? 1 : n;
}
