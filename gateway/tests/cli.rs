//! The binary's command line: bad configurations and flags get one clear line and a
//! non-zero exit, before anything is started. (Also makes cargo build the `swarmgate`
//! binary for the namespace tests in `tests/`.)

use std::process::Command;

fn swarmgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn write(name: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("sg-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"
[underlay]
device = "net_af_packet0,iface=b0"
address = "192.168.77.2/24"

[[network]]
name = "n"
vni = 4097
bridge = "br-n"
"#;

#[test]
fn good_config_checks_ok() {
    let p = write("good", GOOD);
    let (code, out, _) = swarmgate(&["check-config", "-c", &p]);
    assert_eq!(code, 0);
    assert!(out.contains(": ok"));
}

#[test]
fn bad_inputs_get_one_clear_line() {
    for (name, text, expect) in [
        (
            "vni",
            GOOD.replace("4097", "99999999"),
            "VNI 99999999 is outside",
        ),
        ("addr", GOOD.replace("/24", ""), "not ADDRESS/PREFIX"),
        ("toml", "[underlay\n".to_string(), "TOML parse error"),
        (
            "port",
            GOOD.replace("address", "vxlan_port = 80\naddress"),
            "outside 1024-49151",
        ),
    ] {
        let p = write(name, &text);
        let (code, _, err) = swarmgate(&["check-config", "-c", &p]);
        assert_ne!(code, 0, "{name}");
        assert!(
            err.starts_with("swarmgate: ") && err.contains(expect),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let (code, _, err) = swarmgate(&["check-config", "-c", "/nonexistent.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read /nonexistent.toml"));
    let (code, _, err) = swarmgate(&["gateway", "--bogus"]);
    assert_ne!(code, 0);
    assert!(err.contains("--bogus"));
}

#[test]
fn the_daemon_refuses_several_worker_cores() {
    let p = write(
        "cores",
        r#"
[dpdk]
cores = [0, 1]

[underlay]
device = "net_af_packet0,iface=b0"
address = "192.168.77.2/24"
"#,
    );
    let dir = std::env::temp_dir().join(format!("sg-cli-{}-root", std::process::id()));
    let (code, _, err) = swarmgate(&[
        "daemon",
        "-c",
        &p,
        "--data-root",
        &dir.display().to_string(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the daemon runs one data-plane worker"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
