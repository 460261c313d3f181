//! The generator on an in-memory `net_ring` port that hands back what it is given: every
//! frame sent in the window comes back, stamped, and gets a latency sample; the rate
//! limiter never offers more than asked; absurd flags get one clear line. Needs root for
//! DPDK (skipped with a message otherwise, a failure under `CI=true`).

use std::process::Command;

fn pktgen(args: &[&str]) -> std::process::Output {
    let prefix = format!("pktgen-test-{}", std::process::id());
    Command::new(env!("CARGO_BIN_EXE_pktgen"))
        .args(["--file-prefix", &prefix])
        .args(args)
        .output()
        .expect("pktgen runs")
}

#[test]
fn a_loopback_gives_back_every_frame_with_its_latency_within_the_asked_rate() {
    if !swarmgate_tests::netns::root_or_skip("pktgen on a net_ring loopback") {
        return;
    }
    let (rate, seconds, warmup) = (0.05, 0.5, 0.1);
    let out = pktgen(&[
        "--tx",
        "net_ring0",
        "--rx",
        "net_ring0",
        "--size",
        "64",
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--warmup",
        &warmup.to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let sent = v["sent"].as_u64().unwrap();
    assert!(sent > 0, "{v}");
    assert_eq!(v["received"].as_u64(), Some(sent), "{v}");
    assert_eq!(v["latency_us"]["samples"].as_u64(), Some(sent), "{v}");
    let lat = &v["latency_us"];
    assert!(
        lat["p50"].as_f64() <= lat["p99"].as_f64() && lat["p99"].as_f64() <= lat["max"].as_f64(),
        "{v}"
    );
    // Never more than the rate allows over the window, plus the one burst of credit the
    // limiter may carry into it (a generator that fell behind does not catch up).
    assert!(sent as f64 <= rate * 1e6 * seconds + 64.0, "{v}");
    assert_eq!(v["size"], 64);
}

#[test]
fn absurd_flags_get_one_clear_line() {
    for (args, expect) in [
        (
            &["--tx", "net_ring0", "--size", "20"][..],
            "--size must be 60-1514",
        ),
        (
            &["--tx", "net_ring0", "--flows", "0"][..],
            "--flows must be 1-4096",
        ),
        (
            &["--tx", "net_ring0", "--rate", "500"][..],
            "--rate must be 0",
        ),
        (
            &["--tx", "net_ring0", "--seconds", "0"][..],
            "--seconds must be in",
        ),
    ] {
        let out = pktgen(args);
        assert!(!out.status.success(), "{args:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(expect), "{args:?}: {e}");
    }
}
