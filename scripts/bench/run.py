#!/usr/bin/python3
"""The body of scripts/bench-dpdk: flowmark (DPDK build) against Open vSwitch
3.1 + DPDK and the dpdk-testpmd ceiling on the same virtual devices, one PMD
core each, alternately per pcap, plus the vhost-user case. Writes one JSON
line per case (stdout and $OUT/results.jsonl), BENCHMARKS.md and the chart.

Knobs (environment): DUR=5 (s per window) REPS=3 (windows per case, median)
WARM=2 FLOWS="1 10000 100000" RULESETS="simple subtables l4" PMD_CORE=1
CTL_CORE=0 MIN_CPU=95 RETRY_BUDGET=6 DO_OVS=1 DO_VHOST=1 DO_INPROC=1
VHOST_FLOWS=1024 QUIET_WAIT=60 OUT=/tmp/flowmark-bench WRITE_REPORT=1
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("SHARED_BENCH", os.path.join(os.path.dirname(REPO), "shared", "bench"))
OUT = os.environ.get("OUT", "/tmp/flowmark-bench")
DUR = float(os.environ.get("DUR", "5"))
REPS = int(os.environ.get("REPS", "3"))
WARM = float(os.environ.get("WARM", "2"))
FLOWS = [int(x) for x in os.environ.get("FLOWS", "1 10000 100000").split()]
RULESETS = os.environ.get("RULESETS", "simple subtables l4").split()
PMD_CORE = int(os.environ.get("PMD_CORE", "1"))
CTL_CORE = int(os.environ.get("CTL_CORE", "0"))
MIN_CPU = float(os.environ.get("MIN_CPU", "95"))
RETRY_BUDGET = [int(os.environ.get("RETRY_BUDGET", "6"))]
DO_OVS = os.environ.get("DO_OVS", "1") == "1"
DO_VHOST = os.environ.get("DO_VHOST", "1") == "1"
DO_INPROC = os.environ.get("DO_INPROC", "1") == "1"
VHOST_FLOWS = int(os.environ.get("VHOST_FLOWS", "1024"))
QUIET_WAIT = float(os.environ.get("QUIET_WAIT", "60"))
WRITE_REPORT = os.environ.get("WRITE_REPORT", "1") == "1"
FLOWMARK = os.environ.get("FLOWMARK", os.path.join(REPO, "target", "release", "flowmark"))
VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.time()
RUN = os.path.join(OUT, "run")
LOG = os.path.join(OUT, "log")
PCAPS = os.path.join(OUT, "pcaps")
RESULTS = os.path.join(OUT, "results.jsonl")
PREFIX = "fmbench%d" % os.getpid()  # DPDK --file-prefix stem, unique per run
STARTED = []  # Popen objects of every process this script started
STEP = [0, 0]
SEQ = [0]


def note(msg):
    print("# [%s] %s" % (elapsed(), msg), file=sys.stderr, flush=True)


def elapsed():
    s = int(time.time() - T0)
    return "%02d:%02d" % (s // 60, s % 60)


def progress(what):
    STEP[0] += 1
    note("step %d/%d: %s" % (STEP[0], STEP[1], what))


def emit(rec):
    line = json.dumps(rec, sort_keys=False)
    print(line, flush=True)
    with open(RESULTS, "a") as f:
        f.write(line + "\n")


# ------------------------------------------------------------ processes
def new_prefix(tag):
    SEQ[0] += 1
    return "%s%s%d" % (PREFIX, tag, SEQ[0])


def start(argv, log, **kw):
    f = open(log, "ab")
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, **kw)
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGINT, wait=15):
    """Stops one process we started (by its pid), politely then firmly."""
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def rm_prefix(prefix):
    shutil.rmtree("/var/run/dpdk/" + prefix, ignore_errors=True)


def stop_ovs(run_dir, env, prefix, wait_s):
    """ovs-vswitchd, then ovsdb-server: `exit` through their control sockets,
    SIGKILL after wait_s seconds; then the DPDK files of their prefix."""
    for name in ("ovs-vswitchd", "ovsdb-server"):
        try:
            pid = int(open(os.path.join(run_dir, name + ".pid")).read())
        except (OSError, ValueError):
            continue
        subprocess.run(["ovs-appctl", "-t", os.path.join(run_dir, name + ".ctl"), "exit"],
                       env=env, capture_output=True)
        for _ in range(int(wait_s * 10)):
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    rm_prefix(prefix)


def threads(pid):
    out = []
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
                    out.append((int(t), f.read().strip()))
            except OSError:
                pass
    except OSError:
        pass
    return out


def ticks(pid, tid):
    try:
        with open("/proc/%d/task/%d/stat" % (pid, tid)) as f:
            v = f.read().rsplit(")", 1)[1].split()
        return int(v[11]) + int(v[12])
    except (OSError, IndexError):
        return 0


def pin(tid, cpu):
    subprocess.run(["taskset", "-p", "-c", str(cpu), str(tid)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def our_pids():
    """This script and every descendant of it."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    mine, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        mine.add(p)
        todo.extend(kids.get(p, []))
    # ovs-vswitchd/ovsdb-server detach (reparented to init): ours by pid file
    for pf in ("ovs-vswitchd.pid", "ovsdb-server.pid"):
        for base in (os.path.join(OUT, "ovs", "run"), os.path.join(OUT, "ovsvh", "run")):
            try:
                mine.add(int(open(os.path.join(base, pf)).read().strip()))
            except (OSError, ValueError):
                pass
    return mine


def proc_ticks():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    s = f.read()
                comm = s[s.index("(") + 1:s.rindex(")")]
                v = s.rsplit(")", 1)[1].split()
                out[int(d)] = (comm, int(v[11]) + int(v[12]))
            except (OSError, ValueError, IndexError):
                pass
    return out


def foreign_busy(interval=1.0):
    """Processes not started by this script using >= 10 % of a core."""
    a = proc_ticks()
    time.sleep(interval)
    b = proc_ticks()
    mine = our_pids()
    busy = []
    for pid, (comm, t) in b.items():
        if pid in mine or pid not in a:
            continue
        pct = 100.0 * (t - a[pid][1]) / CLK_TCK / interval
        if pct >= 10:
            busy.append("%d:%s:%.0f%%" % (pid, comm, pct))
    return busy


def wait_quiet(what):
    """Waits (up to QUIET_WAIT s) until no foreign process (cargo, rustc,
    fuzzers, ...) uses the CPU; returns the busy list if it never got quiet."""
    t_end = time.time() + QUIET_WAIT
    said = False
    while True:
        busy = foreign_busy()
        if not busy:
            return []
        if time.time() > t_end:
            note("WARNING: still busy after %.0f s, measuring %s anyway (marked): %s"
                 % (QUIET_WAIT, what, " ".join(busy)))
            return busy
        if not said:
            note("waiting for a quiet machine before %s: %s" % (what, " ".join(busy)))
            said = True
        time.sleep(4)


# ------------------------------------------------------------ inputs
def write_rules():
    """The rule sets of ../shared/bench/ovs_baseline.sh, generated exactly as it does."""
    with open(os.path.join(OUT, "rules_simple.txt"), "w") as f:
        f.write("in_port=1,actions=output:2\n")
    with open(os.path.join(OUT, "rules_l4.txt"), "w") as f:
        f.write("in_port=1,udp,tp_dst=5001,actions=output:2\n")
    lines = ["priority=100,ip,nw_src=10.0.0.0/8,actions=output:2"]
    lines += ["priority=200,udp,tp_src=%d,tp_dst=80,actions=drop" % (1041 + 250 * k) for k in range(200)]
    lines += ["priority=300,ip,nw_src=10.%d.0.0/16,nw_dst=172.16.0.0/12,actions=drop" % (2 + k) for k in range(40)]
    lines += ["priority=250,tcp,tp_dst=%d,actions=drop" % (1000 + 7 * k) for k in range(40)]
    lines += ["priority=150,ip,nw_src=10.1.%d.0/24,nw_tos=%d,actions=drop" % (136 + 5 * k, 4 * k) for k in range(20)]
    with open(os.path.join(OUT, "rules_subtables.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"simple": 1, "l4": 1, "subtables": len(lines)}


def npkts(pcap):
    return (os.path.getsize(pcap) - 24) // (16 + 60)


# ------------------------------------------------------------ flowmark
class Flowmark:
    def __init__(self, ports, mbufs, tag, extra=""):
        """extra: more top-level config lines (e.g. "upcall_budget = 32\n")."""
        self.prefix = new_prefix("fm")
        self.sock = os.path.join(RUN, "fm.sock")
        cfg = os.path.join(RUN, "fm-%s.toml" % tag)
        eal = ["--no-huge", "-m", str(max(512, mbufs * 3 // 1024 + 256)), "--no-pci",
               "--no-telemetry", "--file-prefix", self.prefix, "-l", str(CTL_CORE)]
        with open(cfg, "w") as f:
            f.write("pmd_cores = [%d]\noffload = false\n%s\n[dpdk]\neal_args = %s\nmbufs = %d\n"
                    % (PMD_CORE, extra, json.dumps(eal), mbufs))
            for p in ports:
                f.write("\n[[port]]\n" + "".join('%s = %s\n' % (k, json.dumps(v)) for k, v in p.items()))
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.env = dict(os.environ, FLOWMARK_SOCKET=self.sock)
        self.log = os.path.join(LOG, "flowmark-%s.log" % tag)
        self.p = start([FLOWMARK, "run", "--config", cfg], self.log, env=self.env)
        for _ in range(600):
            if self.p.poll() is not None:
                raise RuntimeError("flowmark exited (see %s)" % self.log)
            if os.path.exists(self.sock) and self.cli("port", "list", "--json", check=False) is not None:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("flowmark did not come up (see %s)" % self.log)
        self.pmd_tid = None
        # The PMD pinned itself to PMD_CORE; every other thread goes to CTL_CORE.
        for tid, comm in threads(self.p.pid):
            if comm.startswith("pmd"):
                self.pmd_tid = tid
                pin(tid, PMD_CORE)
            else:
                pin(tid, CTL_CORE)

    def cli(self, *args, check=True):
        r = subprocess.run([FLOWMARK, "--socket", self.sock] + list(args), env=self.env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            if check:
                raise RuntimeError("flowmark %s: %s" % (" ".join(args), r.stderr.strip()))
            return None
        try:
            return json.loads(r.stdout) if "--json" in args else r.stdout
        except ValueError:
            return None

    def tx(self, port):
        for p in self.cli("port", "stats", "--json"):
            if p["name"] == port:
                return p["tx"]
        return 0

    def pmd_ticks(self):
        return ticks(self.p.pid, self.pmd_tid) if self.pmd_tid else 0

    def close(self):
        stop(self.p)
        rm_prefix(self.prefix)


def windows(read_count, read_ticks, clear=None, finish=None):
    """REPS windows of DUR s: Mpps from the counter deltas, CPU share of the
    measured thread; a window under MIN_CPU % is re-measured (budget)."""
    time.sleep(WARM)
    runs, cpus, extra, discarded = [], [], [], []
    while len(runs) < REPS:
        k1 = read_ticks()
        a = time.time()
        c1 = read_count()
        t1 = (a + time.time()) / 2
        if clear:
            clear()
        time.sleep(DUR)
        a = time.time()
        c2 = read_count()
        t2 = (a + time.time()) / 2
        k2 = read_ticks()
        ex = finish() if finish else {}
        cpu = 100.0 * (k2 - k1) / CLK_TCK / (t2 - t1)
        mpps = (c2 - c1) / (t2 - t1) / 1e6
        if cpu < MIN_CPU and RETRY_BUDGET[0] > 0:
            RETRY_BUDGET[0] -= 1
            discarded.append(round(mpps, 3))
            note("window discarded (measured thread got %.0f%% of its core), re-measuring; retries left %d"
                 % (cpu, RETRY_BUDGET[0]))
            continue
        runs.append(round(mpps, 3))
        cpus.append(round(cpu, 1))
        extra.append(ex)
    rec = {"mpps": round(statistics.median(runs), 3), "runs": runs, "cpu_pct": cpus}
    if discarded:
        rec["discarded_runs"] = discarded
    if any(c < MIN_CPU for c in cpus):
        rec["contended"] = True
        rec["mpps_at_full_cpu_est"] = round(statistics.median(r * 100 / max(c, 1) for r, c in zip(runs, cpus)), 3)
    return rec, extra


def med(extra, key, nd=1):
    v = [e[key] for e in extra if e.get(key) is not None]
    return round(statistics.median(v), nd) if v else None


def fm_pmd(fm, clear=False):
    args = ["pmd", "stats", "--json"] + (["--clear"] if clear else [])
    s = fm.cli(*args)
    return s[0] if s else {}


def flowmark_pcap_case(flows, pcap, rs, nrules, busy):
    n = npkts(pcap)
    fm = Flowmark([{"name": "in0", "type": "dpdk", "ofport": 1,
                    "devargs": "net_pcap0,rx_pcap=%s,infinite_rx=1" % pcap},
                   {"name": "out0", "type": "dpdk", "ofport": 2, "devargs": "net_null0,no-rx=1"}],
                  n + 16384, "f%d-%s" % (flows, rs))
    try:
        fm.cli("flow", "add", "--file", os.path.join(OUT, "rules_%s.txt" % rs))

        def finish():
            s = fm_pmd(fm)
            hits = {k: s.get(k, 0) for k in ("simple_hits", "emc_hits", "dpcls_hits", "mark_hits", "upcalls", "lost")}
            return dict(cycles_per_packet=s.get("cycles_per_packet"),
                        subtables_per_dpcls_hit=s.get("subtables_per_dpcls_hit"), **hits)

        rec, extra = windows(lambda: fm.tx("out0"), fm.pmd_ticks,
                             clear=lambda: fm_pmd(fm, clear=True), finish=finish)
        s = fm_pmd(fm)
        out = {"switch": "flowmark", "case": "pcap", "flows": flows, "rules": rs, "n_rules": nrules,
               "mpps": rec["mpps"], "cycles_per_packet": med(extra, "cycles_per_packet"),
               "runs": rec["runs"]}
        for k in ("simple_hits", "emc_hits", "dpcls_hits", "mark_hits", "upcalls", "lost"):
            out[k] = med(extra, k, 0)
        out["subtables_per_dpcls_hit"] = med(extra, "subtables_per_dpcls_hit", 2)
        out["megaflows"] = s.get("megaflows")
        out["subtables"] = s.get("subtables")
        out["pmd_cpu_pct"] = rec["cpu_pct"]
        out["pinning"] = ("pmd=core%d (net_pcap source polled by the PMD itself); "
                          "main/control/EAL threads=core%d" % (PMD_CORE, CTL_CORE))
        for k in ("contended", "mpps_at_full_cpu_est", "discarded_runs"):
            if k in rec:
                out[k] = rec[k]
        if busy:
            out["contended"] = True
            out["foreign_busy"] = busy
        emit(out)
    finally:
        fm.close()


# ------------------------------------------------------------ OVS (shared script)
def ovs_pcap(flows, nrules, busy):
    """../shared/bench/ovs_baseline.sh for one pcap: the OVS cases of every
    rule set, then the testpmd io ceiling on the same vdevs."""
    base = os.path.join(OUT, "ovs")
    env = dict(os.environ, BASE=base, FLOWS=str(flows), RULESETS=" ".join(RULESETS),
               DUR=str(int(DUR)), REPS=str(REPS), WARM=str(int(WARM)), TP_DUR=str(int(DUR)),
               PMD_CORE=str(PMD_CORE), CTL_CORE=str(CTL_CORE), DO_HWOFFLOAD="0", DO_CALIB="0",
               DO_TESTPMD="1", MIN_CPU=str(MIN_CPU), RETRY_BUDGET="3")
    log = os.path.join(LOG, "ovs_baseline-f%d.log" % flows)
    p = start(["bash", os.path.join(SHARED, "ovs_baseline.sh")], log, env=env)
    p.wait()
    res = os.path.join(base, "results.txt")
    if p.returncode != 0 or not os.path.exists(res):
        note("WARNING: ovs_baseline.sh failed for flows=%d (rc=%s, see %s)" % (flows, p.returncode, log))
        return
    for line in open(res):
        if line.startswith("#"):
            continue
        f = line.split()
        if not f:
            continue
        kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
        runs = [float(x) for x in kv.get("mpps_reps", "").split(",") if x]

        def num(k):
            try:
                return float(kv[k].rstrip("%"))
            except (KeyError, ValueError):
                return None
        if f[0] == "ovs-dpdk":
            out = {"switch": "ovs", "case": "pcap", "flows": flows, "rules": kv["rules"],
                   "n_rules": nrules.get(kv["rules"]), "mpps": num("mpps"),
                   "cycles_per_packet": num("cycles_per_pkt"), "runs": runs,
                   "emc_hits": num("emc_hits"), "megaflow_hits": num("megaflow_hits"),
                   "simple_hits": num("simple_hits"), "upcalls": num("upcalls"),
                   "subtbl_lookups": num("subtbl_lookups"), "dp_flows": num("dp_flows"),
                   "masks": num("masks"), "pmd_cpu_pct": num("pmd_cpu"),
                   "pinning": "pmd=core%d; ovs-vswitchd main/handler/revalidator and ovsdb-server=core%d "
                              "(dpdk-lcore-mask, taskset)" % (PMD_CORE, CTL_CORE)}
        elif f[0] == "testpmd-io":
            out = {"switch": "testpmd", "case": "pcap", "flows": flows, "rules": "io", "n_rules": 0,
                   "mpps": num("mpps"), "cycles_per_packet": num("cycles_per_pkt"), "runs": runs,
                   "fwd_cpu_pct": num("fwd_cpu"),
                   "pinning": "forwarding lcore=core%d, main lcore=core%d" % (PMD_CORE, CTL_CORE)}
        else:
            continue
        if "CONTENDED" in line:
            out["contended"] = True
            out["mpps_at_full_cpu_est"] = float(line.split("mpps_at_full_cpu~")[1].split()[0])
        if busy:
            out["contended"] = True
            out["foreign_busy"] = busy
        emit(out)


# ------------------------------------------------------------ vhost
def vm_source(sock, prefix):
    """dpdk-testpmd as the VM: net_virtio_user, flowgen of 64-byte UDP, both
    of its lcores on CTL_CORE."""
    return start(["dpdk-testpmd", "--lcores", "0@%d,1@%d" % (CTL_CORE, CTL_CORE), "--no-huge", "-m", "1024",
                  "--no-pci", "--no-telemetry", "--file-prefix", prefix,
                  "--vdev", "net_virtio_user0,path=%s,queues=1" % sock, "--",
                  "--forward-mode=flowgen", "--flowgen-flows=%d" % VHOST_FLOWS, "--txpkts=64",
                  "--nb-cores=1", "--total-num-mbufs=32768", "--stats-period=1", "--auto-start"],
                 os.path.join(LOG, "vm-%s.log" % prefix), stdin=subprocess.DEVNULL)


def vhost_pinning(what):
    return ("vm (testpmd net_virtio_user flowgen, both lcores)=core%d, sharing core%d with the %s "
            "control threads (idle while measuring); switch pmd=core%d" % (CTL_CORE, CTL_CORE, what, PMD_CORE))


def vm_ticks(vm):
    return sum(ticks(vm.pid, t) for t, c in threads(vm.pid))


def flowmark_vhost(busy):
    sock = os.path.join(RUN, "vm0.sock")
    fm = Flowmark([{"name": "vm0", "type": "vhost", "ofport": 1, "socket": sock, "mode": "server"},
                   {"name": "out0", "type": "dpdk", "ofport": 2, "devargs": "net_null0,no-rx=1"}],
                  32768, "vhost")
    vp = new_prefix("vm")
    vm = None
    try:
        fm.cli("flow", "add", "--file", os.path.join(OUT, "rules_simple.txt"))
        vm = vm_source(sock, vp)
        time.sleep(2)
        if vm.poll() is not None:
            raise RuntimeError("the VM testpmd exited")

        def finish():
            s = fm_pmd(fm)
            return {"cycles_per_packet": s.get("cycles_per_packet")}
        v1, w1 = vm_ticks(vm), time.time()
        rec, extra = windows(lambda: fm.tx("out0"), fm.pmd_ticks,
                             clear=lambda: fm_pmd(fm, clear=True), finish=finish)
        out = {"switch": "flowmark", "case": "vhost", "flows": VHOST_FLOWS, "rules": "simple", "n_rules": 1,
               "mpps": rec["mpps"], "cycles_per_packet": med(extra, "cycles_per_packet"),
               "runs": rec["runs"], "pmd_cpu_pct": rec["cpu_pct"],
               "vm_cpu_pct_avg": round(100.0 * (vm_ticks(vm) - v1) / CLK_TCK / (time.time() - w1), 0),
               "pinning": vhost_pinning("flowmark"), "shared_core": True}
        for k in ("contended", "mpps_at_full_cpu_est", "discarded_runs"):
            if k in rec:
                out[k] = rec[k]
        if busy:
            out["contended"] = True
            out["foreign_busy"] = busy
        emit(out)
    finally:
        stop(vm)
        rm_prefix(vp)
        fm.close()


class OvsControl:
    """ovs-vsctl / ovs-appctl against a private OVS run directory (`self.run`,
    `self.env`); `VSCTL_TIMEOUT` seconds for ovs-vsctl."""
    VSCTL_TIMEOUT = 60

    def sh(self, argv):
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(argv[:3]), r.stderr.strip()[:300]))
        return r.stdout

    def vsctl(self, *a):
        return self.sh(["ovs-vsctl", "--db=unix:%s/db.sock" % self.run,
                        "--timeout=%d" % self.VSCTL_TIMEOUT] + list(a))

    def appctl(self, *a):
        return self.sh(["ovs-appctl", "-t", os.path.join(self.run, "ovs-vswitchd.ctl")] + list(a))


class Ovs(OvsControl):
    """A private ovsdb-server + ovs-vswitchd-dpdk (the approach of
    ../shared/bench/ovs_baseline.sh), here with a dpdkvhostuser port."""

    def __init__(self):
        self.base = os.path.join(OUT, "ovsvh")
        self.run = os.path.join(self.base, "run")
        for d in ("run", "db", "etc"):
            shutil.rmtree(os.path.join(self.base, d), ignore_errors=True)
            os.makedirs(os.path.join(self.base, d))
        self.env = dict(os.environ, OVS_RUNDIR=self.run, OVS_DBDIR=os.path.join(self.base, "db"),
                        OVS_LOGDIR=LOG, OVS_SYSCONFDIR=os.path.join(self.base, "etc"))
        self.prefix = new_prefix("vs")
        db = os.path.join(self.base, "db", "conf.db")
        self.sh(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"])
        self.sh(["taskset", "-c", str(CTL_CORE), "ovsdb-server", db, "--remote=punix:%s/db.sock" % self.run,
                 "--pidfile=%s/ovsdb-server.pid" % self.run, "--unixctl=%s/ovsdb-server.ctl" % self.run,
                 "--log-file=%s/ovsdb-server-vhost.log" % LOG, "--detach", "--no-chdir"])
        self.vsctl("--no-wait", "init")
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
                   "other_config:dpdk-extra=--no-huge --legacy-mem -m 2048 --file-prefix=%s --no-pci --no-telemetry"
                   % self.prefix,
                   "other_config:dpdk-lcore-mask=0x%x" % (1 << CTL_CORE),
                   "other_config:pmd-cpu-mask=0x%x" % (1 << PMD_CORE), "other_config:hw-offload=false")
        self.sh(["taskset", "-c", str(CTL_CORE), VSWITCHD, "unix:%s/db.sock" % self.run,
                 "--pidfile=%s/ovs-vswitchd.pid" % self.run, "--unixctl=%s/ovs-vswitchd.ctl" % self.run,
                 "--log-file=%s/ovs-vswitchd-vhost.log" % LOG, "--detach", "--no-chdir"])
        self.vsctl("--timeout=30", "wait-until", "Open_vSwitch", ".", "dpdk_initialized=true")
        self.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev", "fail_mode=secure",
                   "--", "add-port", "br0", "vhost0", "--", "set", "Interface", "vhost0", "type=dpdkvhostuser",
                   "ofport_request=1",
                   "--", "add-port", "br0", "out0", "--", "set", "Interface", "out0", "type=dpdk",
                   "options:dpdk-devargs=net_null0,no-rx=1", "ofport_request=2")
        self.sh(["ovs-ofctl", "replace-flows", "br0", os.path.join(OUT, "rules_simple.txt")])
        self.sock = os.path.join(self.run, "vhost0")
        self.vpid = int(open(os.path.join(self.run, "ovs-vswitchd.pid")).read())


    def tx_out(self):
        found = False
        for l in self.appctl("dpctl/show", "-s").splitlines():
            if ": out0 " in l or l.strip().endswith(": out0"):
                found = True
            elif found and "TX packets:" in l:
                return int(l.split("TX packets:")[1].split()[0])
        return 0

    def pmd_ticks(self):
        return sum(ticks(self.vpid, t) for t, c in threads(self.vpid) if c.startswith("pmd"))

    def cycles(self):
        for l in self.appctl("dpif-netdev/pmd-stats-show", "-pmd", str(PMD_CORE)).splitlines():
            if "avg processing cycles per packet" in l:
                return float(l.split(":")[1].split()[0])
        return None

    def close(self):
        stop_ovs(self.run, self.env, self.prefix, wait_s=5)
        for d in ("run", "db", "etc"):
            shutil.rmtree(os.path.join(self.base, d), ignore_errors=True)


def ovs_vhost(busy):
    ovs = None
    vm = None
    vp = new_prefix("vm")
    try:
        ovs = Ovs()
        vm = vm_source(ovs.sock, vp)
        time.sleep(2)
        if vm.poll() is not None:
            raise RuntimeError("the VM testpmd exited")
        v1, w1 = vm_ticks(vm), time.time()
        rec, extra = windows(ovs.tx_out, ovs.pmd_ticks,
                             clear=lambda: ovs.appctl("dpif-netdev/pmd-stats-clear"),
                             finish=lambda: {"cycles_per_packet": ovs.cycles()})
        out = {"switch": "ovs", "case": "vhost", "flows": VHOST_FLOWS, "rules": "simple", "n_rules": 1,
               "mpps": rec["mpps"], "cycles_per_packet": med(extra, "cycles_per_packet"),
               "runs": rec["runs"], "pmd_cpu_pct": rec["cpu_pct"],
               "vm_cpu_pct_avg": round(100.0 * (vm_ticks(vm) - v1) / CLK_TCK / (time.time() - w1), 0),
               "pinning": vhost_pinning("ovs-vswitchd/ovsdb-server"), "shared_core": True}
        for k in ("contended", "mpps_at_full_cpu_est", "discarded_runs"):
            if k in rec:
                out[k] = rec[k]
        if busy:
            out["contended"] = True
            out["foreign_busy"] = busy
        emit(out)
    except (RuntimeError, OSError) as e:
        note("WARNING: OVS vhost case failed: %s" % e)
    finally:
        stop(vm)
        rm_prefix(vp)
        if ovs:
            ovs.close()


def testpmd_vhost(busy):
    """The ceiling: dpdk-testpmd io forwarding net_vhost -> net_null on PMD_CORE."""
    sock = os.path.join(RUN, "tpvh.sock")
    sp = new_prefix("tp")
    vp = new_prefix("vm")
    log = os.path.join(LOG, "testpmd-vhost.log")
    if os.path.exists(log):
        os.unlink(log)
    sw = start(["stdbuf", "-oL", "dpdk-testpmd", "-l", "%d,%d" % (CTL_CORE, PMD_CORE), "--main-lcore",
                str(CTL_CORE), "--no-huge", "-m", "1024", "--no-pci", "--no-telemetry", "--file-prefix", sp,
                "--vdev", "net_vhost0,iface=%s,queues=1" % sock, "--vdev", "net_null0,no-rx=1", "--",
                "--forward-mode=io", "--nb-cores=1", "--total-num-mbufs=32768", "--stats-period=1",
                "--auto-start"], log, stdin=subprocess.DEVNULL)
    vm = None
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        vm = vm_source(sock, vp)
        time.sleep(2 + WARM)
        fwd = [t for t, c in threads(sw.pid) if c.startswith(("rte-worker", "lcore-worker"))]
        v1 = vm_ticks(vm)
        k1 = sum(ticks(sw.pid, t) for t in fwd)
        mark = os.path.getsize(log)
        t1 = time.time()
        time.sleep(REPS * DUR + 0.5)
        k2 = sum(ticks(sw.pid, t) for t in fwd)
        t2 = time.time()
        with open(log, errors="replace") as f:
            f.seek(mark)
            text = f.read()
        # --stats-period prints every port each second: port 1's Tx-pps
        pps, port = [], None
        for l in text.splitlines():
            if "NIC statistics for port" in l:
                port = l.split("port")[1].split()[0]
            elif "Tx-pps:" in l and port == "1":
                pps.append(int(l.split("Tx-pps:")[1].split()[0]) / 1e6)
        per = max(1, int(DUR))
        runs = [round(statistics.mean(pps[i:i + per]), 3) for i in range(0, len(pps) - per + 1, per)][:REPS]
        cpu = round(100.0 * (k2 - k1) / CLK_TCK / (t2 - t1), 1)
        if not runs:
            note("WARNING: testpmd vhost ceiling: no samples (see %s)" % log)
            return
        out = {"switch": "testpmd", "case": "vhost", "flows": VHOST_FLOWS, "rules": "io", "n_rules": 0,
               "mpps": round(statistics.median(runs), 3), "cycles_per_packet": None, "runs": runs,
               "fwd_cpu_pct": cpu,
               "vm_cpu_pct_avg": round(100.0 * (vm_ticks(vm) - v1) / CLK_TCK / (t2 - t1), 0),
               "pinning": vhost_pinning("testpmd main-lcore").replace("switch pmd", "testpmd forwarding lcore"),
               "shared_core": True}
        if cpu < MIN_CPU or busy:
            out["contended"] = True
        if busy:
            out["foreign_busy"] = busy
        emit(out)
    finally:
        stop(vm)
        stop(sw)
        rm_prefix(vp)
        rm_prefix(sp)


# ------------------------------------------------------------ in-process
def inproc():
    r = subprocess.run([FLOWMARK, "bench", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        note("WARNING: flowmark bench failed: %s" % r.stderr.strip()[:300])
        return
    with open(os.path.join(OUT, "inproc.jsonl"), "w") as f:
        f.write(r.stdout)
    for l in r.stdout.splitlines():
        try:
            d = json.loads(l)
        except ValueError:
            continue
        d = dict({"switch": "flowmark", "case": "inproc-" + str(d.get("path"))}, **d)
        emit(d)


# ------------------------------------------------------------ main
def main():
    for d in (OUT, RUN, LOG, PCAPS):
        os.makedirs(d, exist_ok=True)
    if os.path.exists(RESULTS):
        os.unlink(RESULTS)
    nrules = write_rules()
    STEP[1] = (len(FLOWS) * (len(RULESETS) + (1 if DO_OVS else 0)) + (3 if DO_VHOST else 0)
               + (1 if DO_INPROC else 0))
    note("bench-dpdk %s  host=%s cpu='%s' cores=%d  DUR=%gs REPS=%d WARM=%gs PMD_CORE=%d CTL_CORE=%d"
         % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.uname().nodename, cpu_model(),
            os.cpu_count(), DUR, REPS, WARM, PMD_CORE, CTL_CORE))
    note("pinning: every switch's PMD on core %d, its other threads on core %d; net_pcap is polled by the "
         "PMD itself; the vhost VM (testpmd) on core %d" % (PMD_CORE, CTL_CORE, CTL_CORE))
    for flows in FLOWS:
        pcap = os.path.join(PCAPS, "f%d.pcap" % flows)
        subprocess.run([sys.executable, os.path.join(SHARED, "mkpcap.py"), pcap, str(flows)],
                       check=True, stdout=subprocess.DEVNULL)
        for rs in RULESETS:
            progress("flowmark flows=%d rules=%s" % (flows, rs))
            busy = wait_quiet("flowmark flows=%d rules=%s" % (flows, rs))
            try:
                flowmark_pcap_case(flows, pcap, rs, nrules[rs], busy)
            except (RuntimeError, OSError) as e:
                note("WARNING: flowmark flows=%d rules=%s failed: %s" % (flows, rs, e))
        if DO_OVS:
            progress("ovs flows=%d rules=%s + testpmd ceiling (../shared/bench/ovs_baseline.sh)"
                     % (flows, ",".join(RULESETS)))
            busy = wait_quiet("ovs flows=%d" % flows)
            ovs_pcap(flows, nrules, busy)
            theirs = os.path.join(OUT, "ovs", "f%d.pcap" % flows)
            if os.path.exists(theirs) and open(theirs, "rb").read() != open(pcap, "rb").read():
                note("WARNING: the OVS pcap differs from flowmark's for flows=%d" % flows)
    if DO_VHOST:
        progress("vhost: flowmark")
        flowmark_vhost(wait_quiet("vhost flowmark"))
        if DO_OVS:
            progress("vhost: ovs dpdkvhostuser")
            ovs_vhost(wait_quiet("vhost ovs"))
        progress("vhost: testpmd ceiling")
        testpmd_vhost(wait_quiet("vhost testpmd"))
    if DO_INPROC:
        progress("flowmark bench (in-process: mark path, offload engine)")
        inproc()
    if WRITE_REPORT:
        subprocess.run([sys.executable, os.path.join(HERE, "report.py"), RESULTS], check=False)
    note("done in %s; results in %s, logs in %s" % (elapsed(), RESULTS, LOG))


def cpu_model():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return "?"


def cleanup():
    for p in STARTED:
        if p.poll() is None:
            stop(p, wait=5)
    for d in os.listdir("/var/run/dpdk") if os.path.isdir("/var/run/dpdk") else []:
        if d.startswith(PREFIX):
            rm_prefix(d)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:
        note("interrupted")
        sys.exit(130)
    finally:
        cleanup()
