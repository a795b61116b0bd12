/* The CPUs this process can count on: cgroup v1 and v2 quotas read from fake trees. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/rcd_cpus.h"
#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"

static char root[RCD_PATH_MAX];

/* Writes text to root/rel, making its directories. */
static void put(const char *rel, const char *text)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_join(path, sizeof path, root, rel) == 0);
    for (char *s = strchr(path + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        mkdir(path, 0755);
        *s = '/';
    }
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Removes the fake tree, if any. */
static void cleanup(void)
{
    char cmd[RCD_PATH_MAX + 16];
    if (!*root) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0);
    *root = 0;
}

static void fresh(void)
{
    cleanup();
    snprintf(root, sizeof root, "/tmp/rcd_cpus_XXXXXX");
    CHECK(mkdtemp(root) != NULL);
}

static int near(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

static void test_v2(void)
{
    fresh();
    put("proc/self/cgroup", "0::/kubepods/pod1/c1\n");
    put("sys/fs/cgroup/cpu.max", "max 100000\n");
    put("sys/fs/cgroup/kubepods/pod1/cpu.max", "250000 100000\n");
    put("sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n");
    CHECK(near(rcd_cpu_quota(root), 2.5)); /* an ancestor's limit binds */
    put("sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "150000 100000\n");
    CHECK(near(rcd_cpu_quota(root), 1.5)); /* the tightest wins */
    /* a container's own view (cgroup namespace): "/" and the mount's own file */
    fresh();
    put("proc/self/cgroup", "0::/\n");
    put("sys/fs/cgroup/cpu.max", "400000 100000\n");
    CHECK(near(rcd_cpu_quota(root), 4.0));
    put("sys/fs/cgroup/cpu.max", "max 100000\n");
    CHECK(rcd_cpu_quota(root) == 0);
    put("sys/fs/cgroup/cpu.max", "garbage\n");
    CHECK(rcd_cpu_quota(root) == 0);
    put("sys/fs/cgroup/cpu.max", "100000 0\n");
    CHECK(rcd_cpu_quota(root) == 0);
}

static void test_v1(void)
{
    fresh();
    put("proc/self/cgroup", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n");
    put("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n");
    put("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    CHECK(near(rcd_cpu_quota(root), 2.0));
    /* inside the container the mount is its own cgroup: the host's path is not under it */
    fresh();
    put("proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n");
    put("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "300000\n");
    put("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
    CHECK(near(rcd_cpu_quota(root), 3.0));
    /* a quota without its period file counts as none */
    fresh();
    put("proc/self/cgroup", "1:cpu:/\n");
    put("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n");
    CHECK(rcd_cpu_quota(root) == 0);
}

static void test_nothing_and_this_process(void)
{
    fresh();
    CHECK(rcd_cpu_quota(root) == 0); /* no /proc/self/cgroup at all */
    char why[128] = "";
    int n = rcd_cpus_available(why, sizeof why);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(n >= 1 && (online < 1 || n <= online));
    CHECK(*why != 0);
    cleanup();
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_v2);
    RUN(test_v1);
    RUN(test_nothing_and_this_process);
    return rcd_test_summary();
}
