#!/usr/bin/python3
"""The VXLAN data paths side by side, in one run, on one topology: the Linux kernel's
bridge + vxlan (Docker's data path), Open vSwitch with DPDK, and swarmgate.

    ns gen:  pktgen --tx net_af_xdp(g0) --rx net_af_xdp(s0)          (CPU 0)
               g0 ──veth── g1   ns dut: one data path               (CPU 1)
               s0 ──veth── h0   (the underlay; s0 is the remote VTEP 192.168.88.2)

Encapsulation: the generator sends inner Ethernet/IPv4/UDP frames, stamped with their send
time, into g1; the data path encapsulates them in VXLAN (VNI 4097) towards 192.168.88.2 out
of h0; the generator receives them on s0, counts them and records their latency
(bench/src/bin/pktgen.rs). Decapsulation: the generator sends the VXLAN frames the remote
VTEP would into h0 and receives the inner frames on g0.

  * kernel:    g1 and vxlan0 in a Linux bridge, static FDB and neighbour (as Docker sets
               them); the kernel's work runs on the sending CPU (CPU 0, with the generator),
               as it does for a task's own traffic. kernel-rps: RPS moves it to CPU 1.
  * ovs-dpdk:  ovs-vswitchd (OVS 3.1, DPDK 22.11) in the namespace, no hugepages; g1 and h0
               as DPDK af_packet ports; br-int: g1 -> vxlan0; br-phy carries the underlay
               (the setup of ../shared/peers/ovs-dpdk-peer.sh); one PMD thread on CPU 1.
  * swarmgate: the gateway with one worker on CPU 1, h0 as its af_packet underlay, g1 in
               the network's bridge behind an XDP socket on a veth (local_ports = "af_xdp");
               the bridge's work stays on the sending CPU (RPS would put it under the
               worker's busy poll, which starves it). swarmgate-tap: the same behind the
               default TAP.

For each path, direction and frame size: the saturation run (the generator as fast as it can), then a
sweep of offered rates (fractions of that path's saturation), each with latency. Writes
bench/results/compare.json, compare.md (the table for BENCHMARKS.md), compare-rate.png and
compare-latency.png.

Usage (root): bench/compare.py [--seconds 2] [--sizes 64,1400] [--directions encap,decap]
                              [--paths kernel,kernel-rps,ovs-dpdk,swarmgate,swarmgate-tap]
Installs what it lacks (openvswitch-switch-dpdk, python3-matplotlib). Everything it starts
is killed by PID and every namespace it made is removed, on errors too.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
RESULTS = os.path.join(ROOT, "bench", "results")  # --out changes it
ID = str(os.getpid())
GEN, DUT = "cmpgen" + ID, "cmpdut" + ID
VNI = 4097
LOCAL, REMOTE = "192.168.88.1", "192.168.88.2"
REMOTE_EP_MAC = "02:42:0a:00:00:02"  # 10.0.0.2, behind the remote VTEP
LOCAL_EP_MAC = "02:42:0a:00:00:01"   # 10.0.0.1, behind g1
FRACTIONS = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25]


def sh(cmd, check=True, ns=None, capture=False):
    if ns:
        cmd = f"ip netns exec {ns} {cmd}"
    r = subprocess.run(cmd, shell=True, text=True, capture_output=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout if capture else r.returncode == 0


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


ALTERNATIVE = None  # ovs-vswitchd's alternative before this run, once it was changed


def restore_alternative():
    if ALTERNATIVE:
        sh(f"update-alternatives --set ovs-vswitchd {ALTERNATIVE}", check=False)


def close_topology():
    for ns in (GEN, DUT):
        sh(f"ip netns del {ns}", check=False)


class Topology:
    def __init__(self):
        for ns in (GEN, DUT):
            sh(f"ip netns add {ns}")
            sh("ip link set lo up", ns=ns)
        sh(f"ip -n {GEN} link add g0 type veth peer name g1 netns {DUT}")
        sh(f"ip -n {GEN} link add s0 address 02:00:c0:a8:58:02 type veth peer name h0 netns {DUT}")
        for ns, i in ((GEN, "g0"), (GEN, "s0"), (DUT, "g1"), (DUT, "h0")):
            # Frames with complete checksums and no GSO, as a NIC hands them over.
            sh(f"ethtool -K {i} tx off tso off gso off gro off", ns=ns, check=False)
            sh(f"sysctl -qw net.ipv6.conf.{i}.disable_ipv6=1", ns=ns)
            sh(f"ip link set {i} up", ns=ns)
        self.s0_mac = "02:00:c0:a8:58:02"


class Process:
    """A child started in a namespace, stopped by PID."""

    def __init__(self, ns, argv, logfile):
        self.log = open(logfile, "w")
        self.p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


class Kernel:
    def __init__(self, rps):
        self.rps = rps
        self.name = "kernel-rps" if rps else "kernel"
        self.label = ("Linux kernel bridge + vxlan, RPS to CPU 1" if rps
                      else "Linux kernel bridge + vxlan, on the sending CPU")

    def up(self, topo, tmp):
        n = DUT
        sh(f"ip addr add {LOCAL}/24 dev h0", ns=n)
        sh(f"ip link add vxlan0 type vxlan id {VNI} dstport 4789 local {LOCAL} dev h0 nolearning noudpcsum", ns=n)
        sh("ip link add br0 type bridge stp_state 0 forward_delay 0", ns=n)
        sh("ip link set g1 master br0", ns=n)
        sh("ip link set vxlan0 master br0", ns=n)
        sh("ip link set vxlan0 up", ns=n)
        sh("ip link set br0 up", ns=n)
        sh(f"bridge fdb add {REMOTE_EP_MAC} dev vxlan0 dst {REMOTE}", ns=n)
        # The decapsulation direction's endpoint, as Docker's bridge learns it.
        sh(f"bridge fdb replace {LOCAL_EP_MAC} dev g1 master static", ns=n)
        sh(f"ip neigh replace {REMOTE} lladdr {topo.s0_mac} dev h0 nud permanent", ns=n)
        if self.rps:
            for i in ("g1", "h0"):
                sh(f"sh -c 'echo 2 > /sys/class/net/{i}/queues/rx-0/rps_cpus'", ns=n)

    def underlay_mac(self):
        return mac_of(DUT, "h0")

    def down(self):
        n = DUT
        for i in ("g1", "h0"):
            sh(f"sh -c 'echo 0 > /sys/class/net/{i}/queues/rx-0/rps_cpus'", ns=n, check=False)
        sh("ip link del br0", ns=n, check=False)
        sh("ip link del vxlan0", ns=n, check=False)
        sh("ip addr flush dev h0", ns=n, check=False)
        sh("ip neigh flush dev h0", ns=n, check=False)


class Swarmgate:
    def __init__(self, local_ports="af_xdp"):
        self.gw = None
        self.local_ports = local_ports
        self.name = "swarmgate" if local_ports == "af_xdp" else f"swarmgate-{local_ports}"
        self.label = f"swarmgate, {local_ports} local port (1 worker on CPU 1)"

    def up(self, topo, tmp):
        n = DUT
        sh("ip link add br-4097 type bridge", ns=n)
        sh("ip link set g1 master br-4097", ns=n)
        sh("ip link set br-4097 up", ns=n)
        cfg = os.path.join(tmp, "gw.toml")
        self.stats = os.path.join(tmp, "gw.json")
        if os.path.exists(self.stats):
            os.remove(self.stats)
        with open(cfg, "w") as f:
            f.write(f"""[dpdk]
cores = [1]
file_prefix = "cmpgw{ID}"
local_ports = "{self.local_ports}"

[underlay]
device = "net_af_packet0,iface=h0"
address = "{LOCAL}/24"

[[network]]
name = "bench"
vni = {VNI}
bridge = "br-4097"
local = [{{ ip = "10.0.0.1" }}]

[[peer]]
vtep = "{REMOTE}"
endpoints = [{{ network = "bench", ip = "10.0.0.2" }}]
""")
        self.gw = Process(n, [os.path.join(BIN, "swarmgate"), "gateway", "-c", cfg,
                              "--stats", self.stats], os.path.join(tmp, "gw.log"))
        # The sink answers no ARP (DPDK owns s0): a static neighbour, as for the others,
        # added once the gateway runs (setting up its exception TAP flushes the table).
        for _ in range(150):
            if not self.gw.alive():
                raise RuntimeError("the gateway exited: " + open(os.path.join(tmp, "gw.log")).read())
            try:
                if REMOTE in json.load(open(self.stats)).get("neighbours", {}):
                    return
                sh(f"ip neigh replace {REMOTE} lladdr {topo.s0_mac} dev sg-exc nud permanent", ns=n)
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the gateway never learnt the sink's neighbour entry")

    def underlay_mac(self):
        return mac_of(DUT, "h0")

    def down(self):
        if self.gw:
            self.gw.stop()
            self.gw = None
            try:
                st = json.load(open(self.stats))
                log(f"{self.name}: drops {st['drops']}, ports " + ", ".join(
                    f"{k} rx {v['rx_packets']} tx {v['tx_packets']}" for k, v in st["ports"].items()))
            except (OSError, ValueError, KeyError):
                pass
        sh("ip link del br-4097", ns=DUT, check=False)
        sh("ip link set g1 nomaster", ns=DUT, check=False)


class OvsDpdk:
    name = "ovs-dpdk"
    label = "OVS-DPDK 3.1 (1 PMD thread on CPU 1)"

    def __init__(self):
        self.db = self.vsd = None

    def ovs(self, cmd, check=True):
        return sh(f"env OVS_RUNDIR={self.d} OVS_LOGDIR={self.d} OVS_DBDIR={self.d} {cmd}",
                  ns=DUT, check=check, capture=True)

    def up(self, topo, tmp):
        self.d = os.path.join(tmp, "ovs")
        os.makedirs(self.d)
        # The DPDK build of ovs-vswitchd, for this run only (restore_alternative).
        global ALTERNATIVE
        if shutil.which("update-alternatives") and ALTERNATIVE is None:
            q = sh("update-alternatives --query ovs-vswitchd", check=False, capture=True)
            ALTERNATIVE = next((l.split(": ", 1)[1] for l in q.splitlines() if l.startswith("Value: ")), "")
            sh("update-alternatives --set ovs-vswitchd /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk",
               check=False)
        db = os.path.join(self.d, "conf.db")
        sh(f"ovsdb-tool create {db} /usr/share/openvswitch/vswitch.ovsschema")
        env = f"env OVS_RUNDIR={self.d} OVS_LOGDIR={self.d} OVS_DBDIR={self.d}"
        sock = f"unix:{self.d}/db.sock"
        self.db = Process(DUT, ["sh", "-c", f"exec {env} ovsdb-server {db} --remote=p{sock} "
                                 f"--pidfile={self.d}/ovsdb-server.pid"],
                          os.path.join(tmp, "ovsdb.log"))
        for _ in range(50):
            if os.path.exists(f"{self.d}/db.sock"):
                break
            time.sleep(0.1)
        self.ovs("ovs-vsctl --no-wait init")
        # OVS adds --in-memory unless told otherwise, and EAL refuses it with --no-huge.
        extra = f"--no-huge -m 1024 --no-pci --legacy-mem --iova-mode=va --file-prefix cmpovs{ID}"
        self.ovs(f"ovs-vsctl --no-wait set Open_vSwitch . other_config:dpdk-init=true "
                 f"'other_config:dpdk-extra=\"{extra}\"' other_config:dpdk-lcore-mask=0x1 "
                 f"other_config:pmd-cpu-mask=0x2")
        self.vsd = Process(DUT, ["sh", "-c", f"exec {env} ovs-vswitchd {sock} "
                                  f"--pidfile={self.d}/ovs-vswitchd.pid"],
                           os.path.join(tmp, "ovs-vswitchd.log"))
        for _ in range(600):
            if self.ovs("ovs-vsctl --timeout=2 get Open_vSwitch . dpdk_initialized",
                        check=False).strip() == "true":
                break
            if not self.vsd.alive():
                raise RuntimeError("ovs-vswitchd exited: " + open(os.path.join(tmp, "ovs-vswitchd.log")).read()[-2000:])
            time.sleep(0.1)
        else:
            raise RuntimeError("OVS DPDK did not initialise")
        o = self.ovs
        o("ovs-vsctl add-br br-int -- set Bridge br-int datapath_type=netdev")
        o("ovs-vsctl add-br br-phy -- set Bridge br-phy datapath_type=netdev")
        o("ovs-vsctl add-port br-int dpdk-g1 -- set Interface dpdk-g1 type=dpdk "
          "options:dpdk-devargs=net_af_packet0,iface=g1")
        o("ovs-vsctl add-port br-phy dpdk-h0 -- set Interface dpdk-h0 type=dpdk "
          "options:dpdk-devargs=net_af_packet1,iface=h0")
        o(f"ovs-vsctl add-port br-int vxlan0 -- set Interface vxlan0 type=vxlan "
          f"options:remote_ip={REMOTE} options:key={VNI}")
        sh(f"ip addr add {LOCAL}/24 dev br-phy", ns=DUT)
        sh("ip link set br-phy up", ns=DUT)
        time.sleep(1)
        if "192.168.88.0/24" not in o("ovs-appctl ovs/route/show"):
            o(f"ovs-appctl ovs/route/add {REMOTE}/24 br-phy")
        o(f"ovs-appctl tnl/arp/set br-phy {REMOTE} {topo.s0_mac}")
        o("ovs-ofctl del-flows br-int")
        o("ovs-ofctl add-flow br-int in_port=dpdk-g1,actions=output:vxlan0")
        o("ovs-ofctl add-flow br-int in_port=vxlan0,actions=output:dpdk-g1")
        o("ovs-ofctl del-flows br-phy")
        o("ovs-ofctl add-flow br-phy in_port=LOCAL,actions=output:dpdk-h0")
        o("ovs-ofctl add-flow br-phy in_port=dpdk-h0,actions=LOCAL")
        for _ in range(40):
            if o("ovs-vsctl get Interface dpdk-g1 link_state", check=False).strip() == "up":
                break
            time.sleep(0.25)

    def underlay_mac(self):
        # Userspace tunnelling pops the VXLAN header of what is addressed to br-phy.
        return mac_of(DUT, "br-phy")

    def down(self):
        if self.vsd:
            self.ovs("ovs-vsctl --timeout=3 --if-exists del-br br-int -- --if-exists del-br br-phy",
                     check=False)
            self.vsd.stop()
            self.vsd = None
        if self.db:
            self.db.stop()
            self.db = None
        for i in ("br-phy", "br-int", "ovs-netdev"):
            sh(f"ip link del {i}", ns=DUT, check=False)
        shutil.rmtree(f"/var/run/dpdk/cmpovs{ID}", ignore_errors=True)


def pktgen(direction, dut, size, rate, seconds, warmup):
    """One run: `encap` sends 10.0.0.1 -> 10.0.0.2 into g1 and receives it in VXLAN on s0;
    `decap` sends 10.0.0.2 -> 10.0.0.1 in VXLAN (VNI 4097, from the remote VTEP to the data
    path's underlay MAC) into h0 and receives the inner frames on g0."""
    if direction == "encap":
        ports = "--tx net_af_xdp0,iface=g0 --rx net_af_xdp1,iface=s0"
    else:
        ports = (f"--tx net_af_xdp0,iface=s0 --rx net_af_xdp1,iface=g0 --vxlan-vni {VNI} "
                 f"--src-mac {REMOTE_EP_MAC} --dst-mac {LOCAL_EP_MAC} --src-ip 10.0.0.2 --dst-ip 10.0.0.1 "
                 f"--outer-src-ip {REMOTE} --outer-dst-ip {LOCAL} --outer-dst-mac {dut.underlay_mac()}")
    out = sh(f"{BIN}/pktgen {ports} --file-prefix cmpgen{ID} --core 0 --size {size} "
             f"--rate {rate:.6f} --seconds {seconds} --warmup {warmup}", ns=GEN, capture=True)
    return json.loads(out.strip().splitlines()[-1])


def mac_of(ns, iface):
    return json.loads(sh(f"ip -j link show {iface}", ns=ns, capture=True))[0]["address"]


def ensure_tools(paths):
    need = []
    if "ovs-dpdk" in paths and not os.path.exists("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"):
        need.append("openvswitch-switch-dpdk")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        need.append("python3-matplotlib")
    if need:
        log("installing " + " ".join(need))
        sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(need) + " >/dev/null")
    # Up to date in a second when nothing changed; a stale pktgen would lack flags.
    log("building pktgen and swarmgate (release)")
    sh(f"cd {ROOT} && cargo build --release --locked -p swarmgate-bench --bin pktgen "
       f"-p swarmgate-gateway --bin swarmgate")


def plots(results, cases):
    """compare-rate.png (delivered vs offered) and compare-latency.png (p50 and p99 vs
    offered), one panel per (direction, size)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel_points(r, d, size, need_latency=False):
        pts = [p for p in r["sweep"] if p["direction"] == d and p["size"] == size
               and (p["latency_us"] or not need_latency)]
        return sorted(pts, key=lambda p: p["offered_mpps"])

    w = len(cases)
    fig, axes = plt.subplots(1, w, figsize=(5.5 * w, 4.5), squeeze=False)
    for ax, (d, size) in zip(axes[0], cases):
        lim = 0.01
        for r in results:
            pts = panel_points(r, d, size)
            lim = max([lim] + [p["offered_mpps"] for p in pts])
            ax.plot([p["offered_mpps"] for p in pts], [p["delivered_mpps"] for p in pts], "o-", label=r["label"])
        ax.plot([0, lim], [0, lim], ":", color="grey", label="delivered = offered")
        ax.set_title(f"{d}, {size} B inner frames")
        ax.set_xlabel("offered (Mpps)")
        ax.set_ylabel("delivered (Mpps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "compare-rate.png"), dpi=100)
    fig, axes = plt.subplots(1, w, figsize=(5.5 * w, 4.5), squeeze=False)
    for ax, (d, size) in zip(axes[0], cases):
        for i, r in enumerate(results):
            pts = panel_points(r, d, size, need_latency=True)
            c = f"C{i}"
            ax.plot([p["offered_mpps"] for p in pts], [p["latency_us"]["p50"] for p in pts], "o-", color=c,
                    label=r["label"] + " p50")
            ax.plot([p["offered_mpps"] for p in pts], [p["latency_us"]["p99"] for p in pts], "^--", color=c,
                    label=r["label"] + " p99")
        ax.set_yscale("log")
        ax.set_title(f"{d}, {size} B: one-way latency vs load")
        ax.set_xlabel("offered (Mpps)")
        ax.set_ylabel("latency (µs, log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "compare-latency.png"), dpi=100)


def table(results, cases, cmd):
    lines = [f"`{cmd}`", "",
             "| data path | direction | inner frame | offered at saturation (Mpps) | delivered (Mpps) "
             "| delivered inner Gb/s | latency at 50 % of saturation p50 / p99 / p99.9 / max (µs) |",
             "|---|---|---|---|---|---|---|"]
    for d, size in cases:
        for r in results:
            key = f"{d} {size}"
            s = r["saturation"][key]
            h = r["half_load"].get(key)
            lat = (f"{h['latency_us']['p50']:.0f} / {h['latency_us']['p99']:.0f} / "
                   f"{h['latency_us']['p999']:.0f} / {h['latency_us']['max']:.0f}"
                   if h and h["latency_us"] else "—")
            lines.append(f"| {r['label']} | {d} | {size} B | {s['offered_mpps']:.3f} | {s['delivered_mpps']:.3f} "
                         f"| {s['delivered_gbps']:.2f} | {lat} |")
    return "\n".join(lines) + "\n"


def main():
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--paths", default="kernel,kernel-rps,ovs-dpdk,swarmgate,swarmgate-tap")
    ap.add_argument("--directions", default="encap,decap")
    ap.add_argument("--sweep", default=",".join(str(f) for f in FRACTIONS),
                    help="offered rates, as fractions of each path's saturation rate")
    ap.add_argument("--out", default=RESULTS, help="where the JSON, table and plots go")
    a = ap.parse_args()
    RESULTS = os.path.abspath(a.out)
    try:
        fractions = [float(f) for f in a.sweep.split(",")]
    except ValueError:
        sys.exit(f"compare.py: --sweep {a.sweep!r} is not a list of numbers")
    if not fractions or not all(0 < f <= 4 for f in fractions):
        sys.exit("compare.py: --sweep fractions must be in (0, 4]")
    if not 0.2 <= a.seconds <= 600:
        sys.exit("compare.py: --seconds must be 0.2-600")
    if os.geteuid() != 0:
        sys.exit("compare.py: needs root (network namespaces, DPDK)")
    try:
        sizes = [int(s) for s in a.sizes.split(",")]
    except ValueError:
        sys.exit(f"compare.py: --sizes {a.sizes!r} is not a list of frame sizes")
    if not all(60 <= s <= 1464 for s in sizes):
        sys.exit("compare.py: --sizes must be 60-1464 bytes (the overlay's MTU)")
    paths = a.paths.split(",")
    directions = a.directions.split(",")
    if not directions or not set(directions) <= {"encap", "decap"}:
        sys.exit("compare.py: --directions is a list of encap, decap")
    known = {"kernel": lambda: Kernel(False), "kernel-rps": lambda: Kernel(True), "ovs-dpdk": OvsDpdk, "swarmgate": Swarmgate,
             "swarmgate-tap": lambda: Swarmgate("tap")}
    for p in paths:
        if p not in known:
            sys.exit(f"compare.py: unknown path {p} ({', '.join(known)})")
    ensure_tools(paths)
    os.makedirs(RESULTS, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="sg-compare-")
    topo = None
    results = []
    current = None
    try:
        topo = Topology()
        for p in paths:
            current = known[p]()
            log(f"{current.name}: setting up")
            current.up(topo, tmp)
            r = {"path": current.name, "label": current.label, "saturation": {}, "half_load": {}, "sweep": []}
            for d in directions:
                for size in sizes:
                    key = f"{d} {size}"
                    sat = pktgen(d, current, size, 0, a.seconds, 1.0)
                    sat["size"], sat["direction"] = size, d
                    r["saturation"][key] = sat
                    log(f"{current.name} {key} B: offered {sat['offered_mpps']:.3f}, "
                        f"delivered {sat['delivered_mpps']:.3f} Mpps")
                    top = max(sat["delivered_mpps"], 0.001)
                    if sat["offered_mpps"] < 1e-6 or sat["delivered_mpps"] < 1e-6:
                        log(f"{current.name} {key} B: nothing got through, no sweep")
                        continue
                    for f in fractions:
                        rate = min(f * top, sat["offered_mpps"])
                        pt = pktgen(d, current, size, rate, a.seconds, 0.5)
                        pt["size"], pt["direction"], pt["fraction"] = size, d, f
                        r["sweep"].append(pt)
                        if f == 0.5:
                            r["half_load"][key] = pt
            results.append(r)
            current.down()
            current = None
    finally:
        try:
            if current:
                current.down()
        finally:
            close_topology()
            for prefix in ("cmpgen", "cmpgw", "cmpovs"):
                shutil.rmtree(f"/var/run/dpdk/{prefix}{ID}", ignore_errors=True)
            restore_alternative()
    meta = {"machine": sh("uname -srm", capture=True).strip(),
            "cpus": os.cpu_count(),
            "commit": sh(f"git -C {ROOT} rev-parse --short HEAD", check=False, capture=True).strip(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "seconds_per_point": a.seconds}
    with open(os.path.join(RESULTS, "compare.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    cmd = " ".join(["bench/compare.py"] + sys.argv[1:])
    cases = [(d, size) for d in directions for size in sizes]
    md = table(results, cases, cmd)
    with open(os.path.join(RESULTS, "compare.md"), "w") as f:
        f.write(md)
    plots(results, cases)
    shutil.rmtree(tmp, ignore_errors=True)
    print(md)


if __name__ == "__main__":
    main()
