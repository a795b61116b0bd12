/* How many CPUs this process can count on: what `--threads 0` means. Not the machine's online
 * CPUs (a container on a 64-CPU node with a 2-CPU limit would start 64 workers whose barriers
 * then wait on descheduled threads), but the affinity mask's CPUs, capped by the CPU quota of
 * the process's cgroup and its ancestors. */
#ifndef RCD_CPUS_H
#define RCD_CPUS_H

#include <stddef.h>

/* The tightest CPU quota over the process's cgroup and its ancestors, in CPUs (quota /
 * period), or 0 when there is none: cgroup v2 `cpu.max` ("max P" or "Q P") and cgroup v1
 * `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none), read under root + /proc/self/cgroup
 * and root + /sys/fs/cgroup (root "" for the real ones; tests pass a fake tree). Files that
 * are missing or malformed count as no quota. */
double rcd_cpu_quota(const char *root);

/* The CPUs of the affinity mask (else the online CPUs), capped by rcd_cpu_quota("") rounded
 * up; at least 1. When why is not NULL it says where the figure came from. */
int rcd_cpus_available(char *why, size_t whylen);

#endif
