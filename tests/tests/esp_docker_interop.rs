//! Encrypted overlays against an ESP implementation that shares no code with swarmgate:
//! `tests/esp_docker.py` computes Docker's SA parameters from moby's definition
//! (`daemon/libnetwork/drivers/overlay/encryption.go`: key = the datapath key itself,
//! SPI = `buildSPI`, salt = be32 SPI, 8-byte ICV) and does AES-GCM with OpenSSL (Python's
//! `cryptography`). Real gateways, real captures on the underlay veths, real endpoints.
//! Also: a gateway that restarts mid-traffic is taken back by its peer within seconds.
//!
//! Needs root (namespaces, DPDK); run one at a time.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use swarmgate_tests::netns::{self, Side, Topology, KEY_HEX, VNI};

static SERIAL: Mutex<()> = Mutex::new(());

/// A second key, tag 2 (Docker keeps up to three; all are accepted on receive).
const KEY2_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !netns::root_or_skip("the encrypted-overlay interop tests") {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

fn script() -> String {
    format!("{}/esp_docker.py", env!("CARGO_MANIFEST_DIR"))
}

/// Debian's python3 with python3-cryptography (`deploy/install-deps.sh`), not whichever
/// interpreter happens to come first on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// Full frames from `iface` in `ns` ([`netns::capture`]).
fn capture(ns: &str, iface: &str, pcap: &std::path::Path) -> impl FnOnce() {
    netns::capture(ns, iface, 0, pcap)
}

/// Waits (up to 10 s) until gateway `i`'s counters show `n` frames decapsulated on the
/// test network: the capture is stopped only after the gateway has delivered them.
fn wait_decap(t: &Topology, i: usize, n: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let s = t.gateways[i].as_ref().unwrap().stats();
        if s["networks"]["test-overlay"]["decap_packets"]
            .as_u64()
            .unwrap_or(0)
            >= n
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn drops(s: &serde_json::Value, reason: &str) -> u64 {
    s["drops"][reason].as_u64().unwrap_or(0)
}

/// Every ESP packet both gateways put on the underlay — through several sequence-number
/// generations (`rekey_after_packets = 64`) — decrypts with OpenSSL under Docker's
/// parameters to the UDP/VXLAN datagram with its inner frame intact, and no (SPI, IV)
/// nonce appears twice.
#[test]
fn gateway_esp_decrypts_with_openssl_under_dockers_parameters() {
    let Some(_g) = guard() else { return };
    let mut t = Topology::with_encryption(
        [Side::Swarmgate, Side::Swarmgate],
        true,
        &format!("keys = [{{ key = \"{KEY_HEX}\", tag = 1 }}]\nrekey_after_packets = 64"),
    );
    let pcaps = [t.dir().join("u1.pcap"), t.dir().join("u2.pcap")];
    // DPDK's af_packet transmissions bypass the sender's capture point, so each side's
    // capture holds what the other gateway sent.
    let stop1 = capture(&t.host(1), &t.underlay_iface(1), &pcaps[0]);
    let stop2 = capture(&t.host(2), &t.underlay_iface(2), &pcaps[1]);
    t.ping(1, 2, 1);
    assert_eq!(t.ping(1, 2, 5), (5, 5));
    assert_eq!(t.ping(2, 1, 5), (5, 5));
    t.udp_echo(1, 2, 100, 1300);
    t.tcp_stream(2, 1, 1 << 20);
    stop1();
    stop2();

    let (ok, out) = netns::try_run(&format!(
        "{PYTHON} {} decrypt --key {KEY_HEX}:1 --vni {VNI} {} {}",
        script(),
        pcaps[0].display(),
        pcaps[1].display()
    ));
    assert!(ok, "independent decryption failed: {out}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert!(r["decrypted"].as_u64().unwrap() > 1000, "{r}");
    assert_eq!(r["decrypted"], r["esp"], "{r}");
    assert_eq!(r["spis"], 2, "one SA each way: {r}");
    for n in r["epochs_per_spi"].as_array().unwrap() {
        assert!(n.as_u64().unwrap() >= 5, "generations rolled over: {r}");
    }
    for k in ["icmp", "udp", "tcp"] {
        assert!(r["inner"][k].as_u64().unwrap_or(0) > 0, "{k}: {r}");
    }
    for g in t.gateways.iter_mut() {
        let s = g.as_mut().unwrap().stop();
        let tx = s["esp_tx"].as_object().unwrap();
        assert_eq!(tx.len(), 1, "{s}");
        assert!(
            tx.values()
                .all(|sa| sa["generations"].as_u64().unwrap() >= 5),
            "{s}"
        );
        for r in [
            "auth_failed",
            "replayed",
            "esp_stale_epoch",
            "seq_exhausted",
        ] {
            assert_eq!(drops(&s, r), 0, "{r}: {s}");
        }
    }
}

/// ESP built only by the independent implementation — Docker's parameters, the kernel's
/// IV construction, five sizes under each of two key tags, and a broadcast ARP request —
/// reaches the endpoint behind the gateway byte for byte; a forged ICV and an unknown SPI
/// are dropped and counted, one each. Then the sender re-creates its SA three times, as
/// Docker does whenever two nodes stop and start sharing an encrypted network: a new
/// random IV salt each time, each lower than the last, sequence numbers from 1. Every
/// re-created SA is taken at once (no `esp_stale_epoch`), a straggler of the old one too,
/// and replays — one in the first SA object, one in a re-created one — are counted.
#[test]
fn independent_esp_reaches_the_endpoint_byte_for_byte_and_bad_esp_is_counted() {
    let Some(_g) = guard() else { return };
    let mut t = Topology::with_encryption(
        [Side::Bare, Side::Swarmgate],
        true,
        &format!(
            "keys = [{{ key = \"{KEY_HEX}\", tag = 1 }}, {{ key = \"{KEY2_HEX}\", tag = 2 }}]"
        ),
    );
    let pcap = t.dir().join("endpoint2.pcap");
    let expected = t.dir().join("expected.hex");
    let stop = capture(&t.endpoint(2), "eth0", &pcap);
    let (ok, out) = t.exec(
        &t.host(1),
        &format!(
            "{PYTHON} {} send --key {KEY_HEX}:1 --key {KEY2_HEX}:2 --vni {VNI} --rebuilds 3 \
             --src-mac {} --dst-mac {} --src-ip {} --dst-ip {} --src {} --to {} --expect {}",
            script(),
            Topology::ep_mac(1),
            Topology::ep_mac(2),
            Topology::ep(1),
            Topology::ep(2),
            Topology::vtep(1),
            Topology::vtep(2),
            expected.display()
        ),
    );
    assert!(ok, "sender: {out}");
    eprintln!("sender: {}", out.trim());
    wait_decap(&t, 1, 21);
    stop();
    let (ok, out) = netns::try_run(&format!(
        "{PYTHON} {} delivered {} {}",
        script(),
        pcap.display(),
        expected.display()
    ));
    let s = t.gateways[1].as_mut().unwrap().stop();
    assert!(ok, "delivery: {out}\ngateway: {s}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    // 10 sizes, the ARP broadcast, 3 × 3 after the re-creations and the straggler.
    assert_eq!(r["delivered_once"], 21, "{r}");

    assert_eq!(drops(&s, "auth_failed"), 1, "{s}");
    assert_eq!(drops(&s, "unknown_spi"), 1, "{s}");
    assert_eq!(drops(&s, "replayed"), 2, "{s}");
    assert_eq!(drops(&s, "esp_stale_epoch"), 0, "{s}");
    assert!(
        s["networks"]["test-overlay"]["decap_packets"]
            .as_u64()
            .unwrap()
            >= 21,
        "{s}"
    );
}

/// One gateway is restarted in the middle of traffic. Its outbound SA starts again at
/// sequence number 1 under the same SPI and key; the peer, whose replay window is far
/// ahead, takes it back at once because the restarted sender's IV epoch is higher, and
/// traffic resumes both ways within seconds. The restarted SA starts a higher epoch (checked
/// in its counters), so its IVs cannot repeat those sent before.
#[test]
fn a_restarted_gateway_is_taken_back_by_its_peer_within_seconds() {
    let Some(_g) = guard() else { return };
    let mut t = Topology::new([Side::Swarmgate, Side::Swarmgate], true);
    t.ping(1, 2, 1);
    // Move gateway 1's window for gateway 2's SA well past what a restart starts from.
    t.udp_echo(1, 2, 300, 200);
    std::thread::sleep(Duration::from_millis(1500)); // counters are written every second
    let epoch_before = {
        let s = t.gateways[1].as_ref().unwrap().stats();
        let sa = s["esp_tx"][Topology::vtep(1).to_string()].clone();
        assert!(sa["seq"].as_u64().unwrap() >= 300, "{s}");
        sa["epoch"].as_u64().unwrap()
    };
    // Traffic across the restart: a ping every 100 ms from endpoint 1.
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.endpoint(1),
            "ping",
            "-i",
            "0.1",
            "-W",
            "1",
            "-c",
            "120",
        ])
        .arg(Topology::ep(2).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    t.restart_gateway(2);
    let restarted = Instant::now();
    // Both directions work again within seconds.
    let mut back = false;
    while restarted.elapsed() < Duration::from_secs(10) {
        if t.ping(2, 1, 1) == (1, 1) && t.ping(1, 2, 1) == (1, 1) {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = restarted.elapsed();
    let _ = Command::new("kill")
        .args(["-INT", &pinger.id().to_string()])
        .status();
    let pings = pinger.wait_with_output().unwrap();
    assert!(back, "traffic did not resume within 10 s of the restart");
    assert_eq!(t.ping(2, 1, 5), (5, 5));
    t.udp_echo(2, 1, 50, 500);
    std::thread::sleep(Duration::from_millis(1500));
    let s2 = t.gateways[1].as_ref().unwrap().stats();
    let sa = &s2["esp_tx"][Topology::vtep(1).to_string()];
    assert!(
        sa["epoch"].as_u64().unwrap() > epoch_before,
        "a restart starts a higher epoch: {epoch_before} then {s2}"
    );
    let s1 = t.gateways[0].as_mut().unwrap().stop();
    assert_eq!(drops(&s1, "replayed"), 0, "{s1}");
    assert_eq!(drops(&s1, "esp_stale_epoch"), 0, "{s1}");
    eprintln!(
        "resumed {:.1} s after the restart; background ping: {}",
        took.as_secs_f64(),
        String::from_utf8_lossy(&pings.stdout)
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("")
    );
}
