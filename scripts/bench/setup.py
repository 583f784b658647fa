#!/usr/bin/python3
"""The body of scripts/bench-setup (issue 12, benchmark b): flow setup rate
through one PMD with R controller-like rules loaded, flowmark (DPDK build,
offload off: the software path) against Open vSwitch 3.1 + DPDK, alternately,
each case on a freshly started switch (cold caches).

Per case: the switch starts with its two sinks (net_null, OpenFlow ports 2
and 3), the rule file of scripts/bench-scale (host /32s, /24 prefixes, TCP
ports, MACs; many masks and priorities) is loaded (flowmark: `flow add
--file`; OVS: `ovs-ofctl --bundle add-flows`), then the source port in0
(OpenFlow port 1) is added: `net_pcap,rx_pcap=FILE` without `infinite_rx`
plays a pcap of N distinct flows once, one 64-byte packet each, every flow
aimed at its own rule, so every packet is a new flow that needs an upcall
and its own megaflow. Measured on the PMD: packets, upcalls, drops (upcall
budget, failed upcalls), megaflows installed, the wall time from the first
packet to the last (counters polled every POLL_MS), the PMD's busy cycles,
cycles per upcall and the upcall latency p50/p99 (flowmark: `pmd stats`
upcall_cycles; OVS: `dpif-netdev/pmd-perf-show`'s cycles/upcall histogram,
pmd-perf-metrics=true). A flow is set up when its packet made a megaflow or
hit one an earlier packet made; a packet dropped on an upcall budget, or
upcalled without a megaflow installed (OVS's flow limit), set up nothing.

One JSON line per case (stdout and $OUT/results.jsonl).
Knobs (environment): RULES="100000 1000000" N=100000 REPS=1
FM_BUDGETS="8 32" (flowmark's upcall_budget per case: 8 is the default, 32
a whole rx burst) DO_OVS=1 WARMUP=50000 OVS_FLOW_LIMIT=2000000 (upcall/set-flow-limit; 0 keeps
OVS's dynamic limit, which starts at 10,000) POLL_MS=10 PMD_CORE=1
CTL_CORE=0 OUT=/tmp/flowmark-bench-setup
"""
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("OUT", "/tmp/flowmark-bench-setup")
sys.path.insert(0, HERE)
import run  # noqa: E402  (the helpers of scripts/bench-dpdk, reading the same environment)
from run import (CLK_TCK, CTL_CORE, LOG, OUT, PMD_CORE, RESULTS, RUN, VSWITCHD, Flowmark,  # noqa: E402
                 emit, new_prefix, note, threads, ticks, wait_quiet)

RULES = [int(x) for x in os.environ.get("RULES", "100000 1000000").split()]
N = int(os.environ.get("N", "100000"))
REPS = int(os.environ.get("REPS", "1"))
FM_BUDGETS = [int(x) for x in os.environ.get("FM_BUDGETS", "8 32").split()]
OVS_FLOW_LIMIT = int(os.environ.get("OVS_FLOW_LIMIT", "2000000"))
POLL_S = float(os.environ.get("POLL_MS", "10")) / 1000
WARMUP = int(os.environ.get("WARMUP", "50000"))
DO_OVS = os.environ.get("DO_OVS", "1") == "1"
# The playback ends when the counter stays put this long (the pcap is done).
SETTLE_S = 1.0
TARGET_RATIO = 2.0


# ------------------------------------------------------------ inputs
def rule_line(i):
    """Rule i of scripts/bench-scale's controller-like file (same generator)."""
    k, hi, lo, b = i % 4, (i >> 8) & 255, i & 255, 10 + (i >> 16)
    if k == 0:
        return "priority=%d,ip,nw_dst=%d.%d.%d.1,actions=output:2" % (100 + i % 50, b, hi, lo)
    if k == 1:
        return "priority=%d,ip,nw_src=%d.%d.%d.0/24,actions=output:3" % (50 + i % 20, b, hi, lo)
    if k == 2:
        return "priority=%d,tcp,nw_dst=%d.%d.%d.2,tp_dst=%d,actions=output:2" % (200 + i % 30, b, hi, lo,
                                                                                 1 + i % 60000)
    return "priority=%d,in_port=1,dl_dst=02:%02x:00:%02x:%02x:01,actions=output:2" % (10 + i % 5, b, hi, lo)


# The warm-up flow's rule: the lowest priority, so that no lookup of a
# measured flow (every one matches a rule of priority 10 or more) visits it.
WARMUP_RULE = "priority=1,udp,nw_dst=198.18.0.1,actions=output:4"


def write_rules(r):
    path = os.path.join(OUT, "rules-%d.txt" % r)
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            for i in range(r):
                f.write(rule_line(i) + "\n")
            f.write(WARMUP_RULE + "\n")
        os.rename(path + ".tmp", path)
    return path


def rule_parts(path, per_part=150000):
    """The rule file in parts of per_part lines: a control request carries
    at most 16 MiB (`flow add --file` sends the file in one)."""
    parts = []
    with open(path) as f:
        lines = f.readlines()
    for k in range(0, len(lines), per_part):
        part = "%s.part%d" % (path, k // per_part)
        if not os.path.exists(part):
            with open(part + ".tmp", "w") as out:
                out.writelines(lines[k:k + per_part])
            os.rename(part + ".tmp", part)
        parts.append(part)
    return parts


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def frame(dl_dst, src, dst, proto, sport, dport, ident):
    """A 60-byte (64 on the wire) Ethernet/IPv4/UDP or TCP frame."""
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 8192, 0, 0) if proto == 6
          else struct.pack("!HHHH", sport, dport, 8, 0))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident & 0xFFFF, 0, 64, proto, 0,
                     bytes(src), bytes(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    f = bytes(dl_dst) + bytes.fromhex("020000000001") + b"\x08\x00" + ip + l4
    return f + bytes(60 - len(f))


# Addresses no rule matches: 172.31.0.1 is in no rule's /24 source prefix,
# 192.0.2.1 is no rule's host, 02:00:00:00:00:02 no rule's MAC.
NO_SRC, NO_DST, NO_MAC = (172, 31, 0, 1), (192, 0, 2, 1), (2, 0, 0, 0, 0, 2)


def flow_frame(r, i):
    """The packet of flow i, aimed at rule r (each flow its own rule, so its
    own megaflow): the rule's host, prefix, host and TCP port, or MAC."""
    k, hi, lo, b = r % 4, (r >> 8) & 255, r & 255, 10 + (r >> 16)
    if k == 0:
        return frame(NO_MAC, NO_SRC, (b, hi, lo, 1), 17, 1024, 5001, i)
    if k == 1:
        return frame(NO_MAC, (b, hi, lo, 7), NO_DST, 17, 1024, 5001, i)
    if k == 2:
        return frame(NO_MAC, NO_SRC, (b, hi, lo, 2), 6, 1024, 1 + r % 60000, i)
    return frame((2, b, 0, hi, lo, 1), NO_SRC, NO_DST, 17, 1024, 5001, i)


def write_pcap(rules, n):
    """WARMUP packets of one flow (to port 4), then n flows spread evenly
    over the rule set, the four kinds in turn. The warm-up covers the time
    a switch needs after its source port starts: OVS's PMD polls the new
    port before ofproto knows it, and fails those first upcalls."""
    path = os.path.join(OUT, "setup-r%d-n%d-w%d.pcap" % (rules, n, WARMUP))
    if os.path.exists(path):
        return path
    stride = max(1, rules // n)
    warm = frame(NO_MAC, NO_SRC, (198, 18, 0, 1), 17, 1024, 5001, 0)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for j in range(WARMUP):
            f.write(struct.pack("<IIII", 0, j, len(warm), len(warm)))
            f.write(warm)
        for i in range(n):
            r = (4 * (i // 4) * stride + i % 4) % rules
            fr = flow_frame(r, i)
            f.write(struct.pack("<IIII", i // 1000000, i % 1000000, len(fr), len(fr)))
            f.write(fr)
    os.rename(path + ".tmp", path)
    return path


# ------------------------------------------------------------ playback
def play(read_rx, n):
    """Polls the source's rx counter from before the first measured packet
    (the one after the warm-up) to the last: (wall seconds first → last,
    packets received). The start and end are the midpoints of the polls
    around them."""
    n += WARMUP
    t_start = time.time()
    last_zero = t_start
    while True:
        c = read_rx()
        now = time.time()
        if c > WARMUP:
            first = (last_zero + now) / 2
            break
        last_zero = now
        if now - t_start > 60:
            raise RuntimeError("the pcap did not get past its warm-up in 60 s")
        time.sleep(POLL_S)
    prev, prev_t, moved_t = c, now, now
    last_below = last_zero
    while True:
        time.sleep(POLL_S)
        c = read_rx()
        now = time.time()
        if c != prev:
            last_below, prev, moved_t = prev_t, c, now
        prev_t = now
        if c >= n or now - moved_t > SETTLE_S:
            break
    # The last packet arrived between the last poll below the final count
    # and the first poll that saw it.
    return (moved_t + last_below) / 2 - first, c


def tsc_hz_of_flowmark(s):
    up = s.get("upcall_cycles", {})
    if up.get("p50_us"):
        return up["p50_cycles"] / up["p50_us"] * 1e6
    if s.get("max_iteration_us"):
        return s["max_iteration_cycles"] / s["max_iteration_us"] * 1e6
    return None


def flowmark_case(rules, n, pcap, rule_file, budget):
    fm = Flowmark([{"name": "out0", "type": "dpdk", "ofport": 2, "devargs": "net_null0,no-rx=1"},
                   {"name": "out1", "type": "dpdk", "ofport": 3, "devargs": "net_null1,no-rx=1"},
                   {"name": "warm", "type": "dpdk", "ofport": 4, "devargs": "net_null2,no-rx=1"}],
                  32768, "setup-r%d-b%d" % (rules, budget),
                  extra="upcall_budget = %d\nmax_idle_ms = 120000\n" % budget)
    try:
        t0 = time.time()
        for part in rule_parts(rule_file):
            fm.cli("flow", "add", "--file", part)
        load_s = time.time() - t0
        fm.cli("pmd", "stats", "--clear")
        k1 = fm.pmd_ticks()

        def rx():
            for p in fm.cli("port", "stats", "--json"):
                if p["name"] == "in0":
                    return p["rx"]
            return 0
        fm.cli("port", "add", "in0", "--type", "dpdk", "--devargs", "net_pcap9,rx_pcap=%s" % pcap,
               "--ofport", "1")
        wall, got = play(rx, n)
        k2 = fm.pmd_ticks()
        s = fm.cli("pmd", "stats", "--json")[0]
        tx = sum(fm.tx(p) for p in ("out0", "out1"))
        warm_tx = fm.tx("warm")
        hz = tsc_hz_of_flowmark(s)
        up = s.get("upcall_cycles", {})
        hits = sum(s.get(k, 0) for k in ("mark_hits", "simple_hits", "emc_hits", "dpcls_hits"))
        created = s.get("megaflows_installed", 0)
        return {
            "switch": "flowmark", "upcall_budget": budget, "rule_load_s": round(load_s, 2),
            "packets": s.get("packets"), "forwarded": tx, "warmup_forwarded": warm_tx, "wall_s": wall,
            "rx_seen": got,
            "hits": hits, "upcalls": s.get("upcalls"), "megaflows_created": created,
            "megaflows": s.get("megaflows"),
            "dropped_upcall_budget": s.get("lost"), "failed_upcalls": s.get("ufid_collisions", 0),
            "not_installed": 0,
            "busy_s": s["busy_cycles"] / hz if hz else None,
            "pmd_cpu_s": (k2 - k1) / CLK_TCK,
            "upcall_cycles_mean": round(up.get("mean_cycles", 0)),
            "upcall_cycles_p50": up.get("p50_cycles"), "upcall_cycles_p99": up.get("p99_cycles"),
            "upcall_us_p50": round(up.get("p50_us", 0), 2), "upcall_us_p99": round(up.get("p99_us", 0), 2),
            "upcall_us_max": round(up.get("max_us", 0), 1), "subtables": s.get("subtables"),
            "upcall_histogram_cycles": up.get("buckets", []),
        }
    finally:
        fm.close()


class OvsPcap(run.OvsControl):
    """A private ovsdb-server + ovs-vswitchd-dpdk (the layout of
    ../shared/bench/ovs_baseline.sh: pmd on PMD_CORE, the rest on CTL_CORE)."""
    VSCTL_TIMEOUT = 120

    def __init__(self):
        self.base = os.path.join(OUT, "ovs")
        self.run = os.path.join(self.base, "run")
        for d in ("run", "db", "etc"):
            shutil.rmtree(os.path.join(self.base, d), ignore_errors=True)
            os.makedirs(os.path.join(self.base, d))
        self.env = dict(os.environ, OVS_RUNDIR=self.run, OVS_DBDIR=os.path.join(self.base, "db"),
                        OVS_LOGDIR=LOG, OVS_SYSCONFDIR=os.path.join(self.base, "etc"))
        self.prefix = new_prefix("vs")
        self.log = os.path.join(LOG, "ovs-vswitchd-setup.log")
        if os.path.exists(self.log):
            os.unlink(self.log)
        db = os.path.join(self.base, "db", "conf.db")
        self.sh(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"])
        self.sh(["taskset", "-c", str(CTL_CORE), "ovsdb-server", db, "--remote=punix:%s/db.sock" % self.run,
                 "--pidfile=%s/ovsdb-server.pid" % self.run, "--unixctl=%s/ovsdb-server.ctl" % self.run,
                 "--log-file=%s/ovsdb-server-setup.log" % LOG, "--detach", "--no-chdir"])
        self.vsctl("--no-wait", "init")
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
                   "other_config:dpdk-extra=--no-huge --legacy-mem -m 2048 --file-prefix=%s --no-pci --no-telemetry"
                   % self.prefix,
                   "other_config:dpdk-lcore-mask=0x%x" % (1 << CTL_CORE),
                   "other_config:pmd-cpu-mask=0x%x" % (1 << PMD_CORE), "other_config:hw-offload=false",
                   "other_config:pmd-perf-metrics=true", "other_config:max-idle=120000",
                   "other_config:flow-limit=%d" % max(OVS_FLOW_LIMIT, 200000))
        self.sh(["taskset", "-c", str(CTL_CORE), VSWITCHD, "unix:%s/db.sock" % self.run,
                 "--pidfile=%s/ovs-vswitchd.pid" % self.run, "--unixctl=%s/ovs-vswitchd.ctl" % self.run,
                 "--log-file=%s" % self.log, "--detach", "--no-chdir"])
        self.vsctl("--timeout=60", "wait-until", "Open_vSwitch", ".", "dpdk_initialized=true")
        self.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev", "fail_mode=secure",
                   "protocols=OpenFlow13",
                   "--", "add-port", "br0", "out0", "--", "set", "Interface", "out0", "type=dpdk",
                   "options:dpdk-devargs=net_null0,no-rx=1", "ofport_request=2",
                   "--", "add-port", "br0", "out1", "--", "set", "Interface", "out1", "type=dpdk",
                   "options:dpdk-devargs=net_null1,no-rx=1", "ofport_request=3",
                   "--", "add-port", "br0", "warm", "--", "set", "Interface", "warm", "type=dpdk",
                   "options:dpdk-devargs=net_null2,no-rx=1", "ofport_request=4")
        self.vpid = int(open(os.path.join(self.run, "ovs-vswitchd.pid")).read())
        if OVS_FLOW_LIMIT:
            # The dynamic limit starts at 10,000 datapath flows and grows by
            # 1,000 per revalidator round; past it upcalls forward the packet
            # but install no megaflow.
            self.appctl("upcall/set-flow-limit", str(OVS_FLOW_LIMIT))


    def port_counter(self, port, what):
        found = False
        for line in self.appctl("dpctl/show", "-s").splitlines():
            if (": %s " % port) in line or line.strip().endswith(": " + port):
                found = True
            elif found and (what + " packets:") in line:
                return int(line.split(what + " packets:")[1].split()[0])
        return 0

    def pmd_ticks(self):
        return sum(ticks(self.vpid, t) for t, c in threads(self.vpid) if c.startswith("pmd"))

    def tsc_hz(self):
        for line in open(self.log, errors="replace"):
            if "DPDK provided TSC frequency:" in line:
                return float(line.split("DPDK provided TSC frequency:")[1].split()[0]) * 1000
        return None

    def close(self):
        run.stop_ovs(self.run, self.env, self.prefix, wait_s=10)


def pmd_stats(text):
    """dpif-netdev/pmd-stats-show → {label: first number}."""
    out = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        k, v = line.split(":", 1)
        try:
            out[k.strip()] = float(v.split()[0])
        except (ValueError, IndexError):
            pass
    return out


def perf_upcall_histogram(text):
    """The cycles/upcall column of `dpif-netdev/pmd-perf-show`'s histograms:
    [(bin upper bound in cycles, count)] (the last bin is open: > bound)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "cycles/upcall" in line:
            # Column titles are separated by two or more spaces ("max vhost qlen").
            heads = re.split(r"\s{2,}", line.strip())
            col = heads.index("cycles/upcall")
            bins = []
            for row in lines[i + 1:]:
                f = row.split()
                if len(f) != 2 * len(heads):
                    break
                b, c = f[2 * col], f[2 * col + 1]
                try:
                    bins.append((None if b == ">" else int(b), int(c)))
                except ValueError:
                    break
            return bins
    return []


def quantile(bins, q):
    """The upper bound of the bin holding the q quantile (None: in the open
    last bin, above every bound)."""
    total = sum(c for _, c in bins)
    if not total:
        return None
    rank, seen = max(1, math.ceil(q * total)), 0
    for b, c in bins:
        seen += c
        if seen >= rank:
            return b
    return None


def ovs_case(rules, n, pcap, rule_file):
    ovs = OvsPcap()
    try:
        t0 = time.time()
        ovs.sh(["ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", "br0", rule_file])
        load_s = time.time() - t0
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        ovs.appctl("dpif-netdev/pmd-perf-show")  # nothing to read yet; makes sure it answers
        k1 = ovs.pmd_ticks()
        ovs.vsctl("add-port", "br0", "in0", "--", "set", "Interface", "in0", "type=dpdk",
                  "options:dpdk-devargs=net_pcap9,rx_pcap=%s" % pcap, "ofport_request=1")
        wall, got = play(lambda: ovs.port_counter("in0", "RX"), n)
        k2 = ovs.pmd_ticks()
        st = pmd_stats(ovs.appctl("dpif-netdev/pmd-stats-show", "-pmd", str(PMD_CORE)))
        perf = ovs.appctl("dpif-netdev/pmd-perf-show", "-pmd", str(PMD_CORE))
        with open(os.path.join(LOG, "ovs-pmd-perf-r%d.txt" % rules), "w") as f:
            f.write(perf)
        upcall_show = ovs.appctl("upcall/show")
        coverage = ovs.appctl("coverage/show")
        with open(os.path.join(LOG, "ovs-coverage-r%d.txt" % rules), "w") as f:
            f.write(coverage)
        cov = {}
        for line in coverage.splitlines():
            if "total:" in line:
                cov[line.split()[0]] = int(line.split("total:")[1].split()[0])
        flows = None
        for line in upcall_show.splitlines():
            if "flows" in line and "current" in line:
                flows = int(line.split("current")[1].split(")")[0])
                break
        hz = ovs.tsc_hz()
        tx = ovs.port_counter("out0", "TX") + ovs.port_counter("out1", "TX")
        warm_tx = ovs.port_counter("warm", "TX")
        hist = perf_upcall_histogram(perf)
        p50, p99 = quantile(hist, 0.5), quantile(hist, 0.99)
        upcall_avg_us = None
        for line in perf.splitlines():
            if "Upcalls:" in line and "us/upcall" in line:
                upcall_avg_us = float(line.split(",")[-1].split("us/upcall")[0].strip())
        hits = sum(st.get(k, 0) for k in ("emc hits", "smc hits", "megaflow hits", "simple match hits"))
        ok = int(st.get("miss with success upcall", 0))
        return {
            "switch": "ovs", "flow_limit": OVS_FLOW_LIMIT or "dynamic", "rule_load_s": round(load_s, 2),
            "packets": int(st.get("packets received", 0)), "forwarded": tx, "warmup_forwarded": warm_tx,
            "wall_s": wall, "rx_seen": got,
            "hits": int(hits), "upcalls": ok, "megaflows_created": flows, "megaflows": flows,
            "dropped_upcall_budget": 0, "failed_upcalls": int(st.get("miss with failed upcall", 0)),
            # Upcalls that forwarded the packet but installed nothing (past
            # the flow limit): those flows are not set up.
            "not_installed": cov.get("upcall_flow_limit_hit", 0),
            "coverage": {k: v for k, v in cov.items() if k.startswith(("upcall", "handler", "dpif_flow_put",
                                                                        "datapath_drop", "dpif_execute"))},
            "busy_s": st.get("processing cycles", 0) / hz if hz else None,
            "pmd_cpu_s": (k2 - k1) / CLK_TCK,
            "upcall_us_mean": upcall_avg_us,
            "upcall_cycles_p50": p50, "upcall_cycles_p99": p99,
            "upcall_us_p50": round(p50 / hz * 1e6, 2) if p50 and hz else None,
            "upcall_us_p99": round(p99 / hz * 1e6, 2) if p99 and hz else None,
            "upcall_histogram_cycles": hist,
            "upcall_show": " ".join(upcall_show.split())[:300],
        }
    finally:
        ovs.close()


def finish(rec, rules, n):
    """Adds the derived rates: flows set up per second over the wall time
    from first to last packet, and over the PMD's busy time."""
    # A measured flow is set up when its packet was forwarded and a megaflow
    # covers it (its own, or one an earlier packet made: OVS's megaflows can
    # be wider, and packets of one burst that share a megaflow all upcall).
    # The warm-up made one megaflow.
    warm = rec["warmup_forwarded"]
    set_up = max(0, rec["forwarded"] - rec["not_installed"])
    rec = dict({"case": "flow-setup", "rules": rules, "flows": n, "warmup_packets": WARMUP}, **rec)
    rec["flow_megaflows"] = max(0, (rec.get("megaflows_created") or 0) - (1 if warm else 0))
    rec["flows_dropped"] = n - rec["forwarded"]
    rec["flows_set_up"] = set_up
    rec["set_up_share"] = round(set_up / n, 4)
    rec["wall_s"] = round(rec["wall_s"], 4)
    rec["setup_per_s"] = round(set_up / rec["wall_s"]) if rec["wall_s"] > 0 else None
    rec["packets_per_s"] = round(rec["packets"] / rec["wall_s"]) if rec["wall_s"] > 0 else None
    if rec.get("busy_s"):
        rec["busy_s"] = round(rec["busy_s"], 4)
        rec["setup_per_busy_s"] = round(set_up / rec["busy_s"])
    rec["pmd_cpu_s"] = round(rec["pmd_cpu_s"], 2)
    return rec


def main():
    for d in (OUT, RUN, LOG):
        os.makedirs(d, exist_ok=True)
    if os.path.exists(RESULTS):
        os.unlink(RESULTS)
    note("bench-setup %s RULES=%s N=%d REPS=%d FM_BUDGETS=%s OVS_FLOW_LIMIT=%d PMD_CORE=%d CTL_CORE=%d"
         % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), RULES, N, REPS, FM_BUDGETS, OVS_FLOW_LIMIT,
            PMD_CORE, CTL_CORE))
    for rules in RULES:
        rule_file = write_rules(rules)
        pcap = write_pcap(rules, N)
        for rep in range(REPS):
            recs = []
            # Alternate which switch goes first per repetition.
            order = (["ovs"] if DO_OVS else []) + ["fm%d" % b for b in FM_BUDGETS]
            if rep % 2:
                order.reverse()
            for who in order:
                busy = wait_quiet("%s rules=%d" % (who, rules))
                note("rules=%d rep %d: %s" % (rules, rep + 1, who))
                try:
                    if who == "ovs":
                        r = ovs_case(rules, N, pcap, rule_file)
                    else:
                        r = flowmark_case(rules, N, pcap, rule_file, int(who[2:]))
                except (RuntimeError, OSError, ValueError, KeyError, IndexError) as e:
                    note("WARNING: %s rules=%d failed: %s" % (who, rules, e))
                    continue
                r = finish(r, rules, N)
                if busy:
                    r["contended"] = True
                    r["foreign_busy"] = busy
                recs.append(r)
            ovs = [r for r in recs if r["switch"] == "ovs"]
            for r in recs:
                if r["switch"] == "flowmark" and ovs and ovs[0].get("setup_per_s"):
                    r["ratio_vs_ovs"] = round(r["setup_per_s"] / ovs[0]["setup_per_s"], 2)
                    r["target_ratio_min"] = TARGET_RATIO
                    # A flow dropped on the way (upcall budget) is not set up:
                    # a fast rate over a fraction of the flows does not count.
                    r["met"] = r["ratio_vs_ovs"] >= TARGET_RATIO and r["set_up_share"] >= 0.99
                emit(r)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:
        note("interrupted")
        sys.exit(130)
    finally:
        run.cleanup()
