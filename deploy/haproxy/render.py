#!/usr/bin/env python3
"""Renders deploy/haproxy/haproxy.cfg.tmpl (python3 stdlib only).

Tests and local runs:
    render.py --listen 127.0.0.1:8000 --server r0=127.0.0.1:9000/9100 --server r1=127.0.0.1:9001/9101
Kubernetes (committed as deploy/k8s/base/haproxy.cfg; deploy/haproxy/check.sh diffs it):
    render.py --k8s [--replicas 6] [--namespace recurd] [--port 50051] [--check-port 8080]
              [--listen :50051]
A server's health check is a TCP connect to its CHECK_PORT (/CHECK_PORT after its address, or
--check-port for all; k8s default 8080): recurd's --http-port, whose listener closes the moment
a drain begins, so the balancer stops sending calls to a draining replica within a second.
Without one the check connects to the gRPC port, which stays open until the drain ends.
The k8s rendering names the StatefulSet's pods by their stable DNS names
recurd-<i>.recurd-headless.<ns>.svc.cluster.local:<port> for i < --replicas (the HPA's
maxReplicas: a pod beyond them gets no traffic) and re-resolves them (resolvers k8s), so a
rescheduled pod's new IP is followed. Writes to stdout, or to -o FILE."""
import argparse
import os
import re
import string
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "haproxy.cfg.tmpl")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
ADDR_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*):([0-9]{1,5})$")

RESOLVERS = """
resolvers k8s
    # The pods' DNS names are re-resolved, so a rescheduled replica's new IP is followed.
    parse-resolv-conf
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s
    hold valid 5s
    hold nx 5s
    hold obsolete 5s
"""

MONITOR = """
frontend lb_health
    # The balancer's own liveness/readiness: GET /healthz -> 200 while HAProxy runs.
    bind {monitor}
    mode http
    monitor-uri /healthz
"""


def check_addr(a, what):
    m = ADDR_RE.match(a)
    if not m or not 0 < int(m.group(2)) < 65536:
        sys.exit("render.py: %s '%s' is not HOST:PORT" % (what, a))
    return a


def check_port(p, what):
    if not re.match(r"^[0-9]{1,5}$", p) or not 0 < int(p) < 65536:
        sys.exit("render.py: %s '%s' is not a port (1-65535)" % (what, p))
    return int(p)


def render(listen, servers, k8s=False, monitor=None, header=""):
    """servers: (name, HOST:PORT, check port or None) in ring order."""
    with open(TEMPLATE) as f:
        tmpl = string.Template(f.read())
    lines = []
    ids = set()
    for name, addr, cport in servers:
        if not NAME_RE.match(name) or name in ids:
            sys.exit("render.py: bad or repeated server name '%s'" % name)
        ids.add(name)
        lines.append("    server %s %s%s" % (name, addr, " port %d" % cport if cport else ""))
    return tmpl.substitute(
        header=header,
        listen=listen,
        resolvers=RESOLVERS if k8s else "",
        monitor=MONITOR.format(monitor=monitor) if monitor else "",
        # init-addr last,libc,none: start even when a pod does not exist yet (scaled down);
        # the resolvers fill its address when it appears.
        server_opts=" resolvers k8s init-addr last,libc,none" if k8s else "",
        servers="\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", help="HOST:PORT the balancer binds (k8s default :50051)")
    ap.add_argument("--server", action="append", default=[],
                    metavar="NAME=HOST:PORT[/CHECK_PORT]",
                    help="a replica (repeat; order fixes the ring: keep it stable); "
                         "CHECK_PORT: its --http-port, the health check's target")
    ap.add_argument("--check-port", metavar="PORT",
                    help="health-check every server on this port (recurd's --http-port) "
                         "unless it names its own; k8s default 8080, 0: the gRPC port")
    ap.add_argument("--monitor", metavar="HOST:PORT",
                    help="also serve GET /healthz there (k8s default :8404)")
    ap.add_argument("--k8s", action="store_true", help="render for the Kubernetes base")
    ap.add_argument("--replicas", type=int, default=6,
                    help="k8s: servers recurd-0..N-1 (default 6, the HPA's maxReplicas)")
    ap.add_argument("--namespace", default="recurd", help="k8s: namespace (default recurd)")
    ap.add_argument("--port", type=int, default=50051, help="k8s: replica port (50051)")
    ap.add_argument("-o", "--output", help="write here instead of stdout")
    a = ap.parse_args(argv)

    if a.k8s:
        if a.server:
            ap.error("--k8s names its servers itself; drop --server")
        if not 1 <= a.replicas <= 256:
            ap.error("--replicas must be 1..256")
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", a.namespace):
            ap.error("--namespace is not a DNS label")
        cport = check_port(a.check_port or "8080", "--check-port") if a.check_port != "0" \
            else None
        servers = [("recurd-%d" % i, "recurd-%d.recurd-headless.%s.svc.cluster.local:%d"
                    % (i, a.namespace, a.port), cport) for i in range(a.replicas)]
        listen = check_addr(a.listen or ":50051", "--listen")
        monitor = check_addr(a.monitor or ":8404", "--monitor")
        header = ("GENERATED by deploy/haproxy/render.py --k8s --replicas %d --namespace %s"
                  " --port %d --check-port %s: do not edit."
                  % (a.replicas, a.namespace, a.port, cport or 0))
    else:
        if not a.listen or not a.server:
            ap.error("give --listen and at least one --server (or --k8s)")
        listen = check_addr(a.listen, "--listen")
        dport = (check_port(a.check_port, "--check-port")
                 if a.check_port and a.check_port != "0" else None)
        servers = []
        for s in a.server:
            name, sep, addr = s.partition("=")
            if not sep:
                ap.error("--server takes NAME=HOST:PORT[/CHECK_PORT], not '%s'" % s)
            addr, slash, cp = addr.partition("/")
            cport = check_port(cp, "--server %s's check port" % name) if slash else dport
            servers.append((name, check_addr(addr, "--server"), cport))
        monitor = check_addr(a.monitor, "--monitor") if a.monitor else None
        header = "GENERATED by deploy/haproxy/render.py: do not edit."
    out = render(listen, servers, k8s=a.k8s, monitor=monitor, header=header)
    if a.output:
        with open(a.output, "w") as f:
            f.write(out)
    else:
        sys.stdout.write(out)


if __name__ == "__main__":
    main()
