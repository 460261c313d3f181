//! Two hosts in network namespaces, each running `swarmgate daemon` with its own DPDK
//! gateway (af_packet underlay; TCP 2377 goes through each gateway's exception path):
//! `swarm init` on one, `swarm join` on the other, with the refusals SwarmKit gives —
//! a malformed token, a token for another CA, a rotated token, a manager token (not yet
//! supported), a client without a certificate, a worker calling a manager-only service —
//! and the worker's heartbeats making it Ready, then Down when its daemon stops; node
//! inspect, update and rm, `swarm update --cert-expiry`, a certificate renewed over
//! mutual TLS, a removed node refused; and placement over the two nodes — constraints,
//! replicas per node, drain and pause — with SwarmKit's "no suitable node" reasons.
//!
//! Checked against implementations that share no code with swarmgate: the token's digest
//! recomputed by Python's hashlib from the root certificate the manager serves, and the
//! manager's certificate chain verified and its subject read by OpenSSL.
//!
//! Needs root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use swarmgate_control::agent::{self, Description};
use swarmgate_control::cluster_api::{
    self as capi, ca_client::CaClient, dispatcher_client::DispatcherClient,
    health_client::HealthClient,
};
use swarmgate_control::tls;
use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_for, Host, Lan};

const MANAGER_IP: &str = "192.168.83.1";
const WORKER_IP: &str = "192.168.83.2";

/// Runs `f` on a thread inside network namespace `ns`, on its own single-threaded runtime.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

fn python(script: &str, input: &str) -> String {
    let mut c = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

fn node_rows(h: &Host) -> Vec<serde_json::Value> {
    h.rows("node ls")
}

fn probe_desc() -> Description {
    Description {
        hostname: "probe".into(),
        advertise_addr: WORKER_IP.parse().unwrap(),
        datapath_addr: WORKER_IP.parse().unwrap(),
    }
}

fn probe_beat() -> capi::HeartbeatRequest {
    capi::HeartbeatRequest {
        hostname: "probe".into(),
        advertise_addr: WORKER_IP.into(),
        datapath_addr: WORKER_IP.into(),
        tasks: Vec::new(),
    }
}

fn write(dir: &Path, name: &str, s: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn a_worker_joins_with_a_token_over_mutual_tls() {
    if !netns::root_or_skip("the swarm join test") {
        return;
    }
    let mut lan = Lan::new("sgj", 83, &["m", "w"]);
    for h in &mut lan.hosts {
        h.start();
    }
    let (m, w) = (&lan.hosts[0], &lan.hosts[1]);

    // Init's own refusals (moby's wording), then init with a custom address pool and
    // data-path port, which the worker inherits when it joins.
    let out = m.err("swarm init --data-path-port 80");
    assert!(
        out.contains("Datapath port number is not in valid range (1024-49151) : 80"),
        "{out}"
    );
    let out =
        m.err("swarm init --default-addr-pool 10.20.0.0/16 --default-addr-pool-mask-length 30");
    assert!(out.contains("subnet size is out of range: 30"), "{out}");
    let out =
        m.err("swarm init --default-addr-pool 10.20.0.0/16 --default-addr-pool-mask-length 12");
    assert!(
        out.contains("Subnet size is too small for pool: 12"),
        "{out}"
    );
    let init = m.ok(&format!(
        "swarm init --advertise-addr {MANAGER_IP} --default-addr-pool 10.20.0.0/16 \
         --default-addr-pool-mask-length 25 --data-path-port 4790"
    ));
    let ingress: serde_json::Value =
        serde_json::from_str(&m.ok("network inspect ingress")).unwrap();
    assert_eq!(
        ingress[0]["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/25",
        "{ingress}"
    );
    let stats: serde_json::Value = serde_json::from_str(&m.ok("stats")).unwrap();
    assert_eq!(
        stats["vxlan_port"], 4790,
        "the manager's data plane uses the swarm's port"
    );
    let out = m.err("service create --name vx --publish 4790:80/udp -- sleep 1000");
    assert!(
        out.contains("4790/udp") && out.contains("data path"),
        "{out}"
    );
    let worker_token = m.ok("swarm join-token -q worker").trim().to_owned();
    let manager_token = m.ok("swarm join-token -q manager").trim().to_owned();
    assert!(
        init.contains(&worker_token) && init.contains(&manager_token),
        "{init}"
    );
    assert_ne!(worker_token, manager_token);
    let parts: Vec<&str> = worker_token.split('-').collect();
    assert_eq!(parts.len(), 4, "{worker_token}");
    assert_eq!((parts[0], parts[1]), ("SWMTKN", "1"));
    assert_eq!(parts[2].len(), 50);
    assert_eq!(parts[3].len(), 25);
    let human = m.ok("swarm join-token worker");
    assert!(
        human.contains(&format!(
            "swarmgate swarm join --token {worker_token} {MANAGER_IP}:2377"
        )),
        "{human}"
    );

    // The root the manager serves, fetched as a joiner does; its digest recomputed by
    // Python from the PEM bytes is the token's middle part.
    let root_pem = in_netns(&w.ns, async {
        let c = tls::channel(
            format!("{MANAGER_IP}:2377").parse().unwrap(),
            tls::bootstrap_config().unwrap(),
        );
        CaClient::new(c)
            .get_root_ca_certificate(capi::Empty {})
            .await
            .unwrap()
            .into_inner()
            .certificate
    });
    let digest36 = python(
        "import hashlib,sys\n\
         n=int(hashlib.sha256(sys.stdin.buffer.read()).hexdigest(),16)\n\
         d='0123456789abcdefghijklmnopqrstuvwxyz';s=''\n\
         while n: n,r=divmod(n,36); s=d[r]+s\n\
         print(s.rjust(50,'0'))",
        &root_pem,
    );
    assert_eq!(digest36, parts[2], "the token pins the root's PEM digest");

    // OpenSSL verifies the manager's certificate (as served on 2377) against that root and
    // reads SwarmKit's subject from it.
    let root_file = write(&m.dir, "root.pem", &root_pem);
    let chain = netns::run(&format!(
        "ip netns exec {} sh -c 'openssl s_client -connect {MANAGER_IP}:2377 -servername swarm-manager -showcerts </dev/null 2>/dev/null'",
        w.ns
    ));
    let leaf_pem: String = {
        let a = chain
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate");
        let b = chain[a..].find("-----END CERTIFICATE-----").unwrap() + a + 25;
        chain[a..b].to_owned() + "\n"
    };
    let leaf = write(&m.dir, "manager.pem", &leaf_pem);
    let verify = netns::run(&format!(
        "openssl verify -CAfile {} -purpose sslserver {}",
        root_file.display(),
        leaf.display()
    ));
    assert!(verify.contains(": OK"), "{verify}");
    let subject = netns::run(&format!(
        "openssl x509 -noout -subject -nameopt RFC2253 -in {}",
        leaf.display()
    ));
    let manager_row = node_rows(m).remove(0);
    let manager_id = manager_row["ID"]
        .as_str()
        .unwrap()
        .trim_end_matches(" *")
        .to_owned();
    assert!(subject.contains(&format!("CN={manager_id}")), "{subject}");
    assert!(subject.contains("OU=swarm-manager"), "{subject}");
    let root_subject = netns::run(&format!(
        "openssl x509 -noout -subject -in {}",
        root_file.display()
    ));
    assert!(root_subject.contains("CN = swarm-ca"), "{root_subject}");

    // Refusals, each one line, each leaving the worker outside any swarm and the manager
    // with one node.
    let remote = format!("{MANAGER_IP}:2377");
    let out = w.err(&format!("swarm join --token SWMTKN-1-abc-def {remote}"));
    assert!(out.contains("invalid join token"), "{out}");
    let mut other_ca = parts.clone();
    let flipped = if parts[2].starts_with('0') { "1" } else { "0" };
    let forged_digest = format!("{flipped}{}", &parts[2][1..]);
    other_ca[2] = &forged_digest;
    let out = w.err(&format!(
        "swarm join --token {} {remote}",
        other_ca.join("-")
    ));
    assert!(
        out.contains("remote CA does not match fingerprint"),
        "{out}"
    );
    let rotated = m.ok("swarm join-token --rotate worker");
    assert!(
        rotated.contains("Successfully rotated worker join token."),
        "{rotated}"
    );
    let out = w.err(&format!("swarm join --token {worker_token} {remote}"));
    assert!(
        out.contains("A valid join token is necessary to join this cluster"),
        "{out}"
    );
    let out = w.err("node ls");
    assert!(out.contains("This node is not a swarm manager"), "{out}");
    let out = w.err("swarm leave");
    assert!(
        out.contains("not part of a swarm"),
        "refusals left nothing behind: {out}"
    );
    assert_eq!(node_rows(m).len(), 1);

    // The join itself, with the rotated token.
    let worker_token = m.ok("swarm join-token -q worker").trim().to_owned();
    let joined = w.ok(&format!("swarm join --token {worker_token} {remote}"));
    assert!(
        joined.contains("This node joined a swarm as a worker."),
        "{joined}"
    );
    let stats: serde_json::Value = serde_json::from_str(&w.ok("stats")).unwrap();
    assert_eq!(
        stats["vxlan_port"], 4790,
        "the worker takes the swarm's data-path port"
    );
    let out = w.err("node ls");
    assert!(
        out.contains("Worker nodes can't be used to view or modify cluster state"),
        "{out}"
    );
    let out = w.err(&format!("swarm join --token {worker_token} {remote}"));
    assert!(out.contains("already part of a swarm"), "{out}");
    let ready = wait_for("the worker Ready on the manager", 20, || {
        node_rows(m)
            .iter()
            .any(|n| n["Status"] == "Ready" && n["ManagerStatus"] == "" && n["Addr"] == WORKER_IP)
    });
    eprintln!(
        "worker Ready on the manager {:.1} s after joining",
        ready.as_secs_f64()
    );

    // Without a client certificate only the CA's join calls answer; with a worker's, the
    // dispatcher answers and the manager-only health service refuses.
    let probe_token = worker_token.clone();
    let addr: std::net::SocketAddr = format!("{MANAGER_IP}:2377").parse().unwrap();
    let (no_cert, probe, worker_beat, worker_health) = in_netns(&w.ns, async move {
        let anon = tls::channel(addr, tls::bootstrap_config().unwrap());
        let no_cert = DispatcherClient::new(anon.clone())
            .heartbeat(capi::HeartbeatRequest::default())
            .await
            .unwrap_err();
        let no_cert_renew = CaClient::new(anon)
            .renew_node_certificate(capi::RenewRequest {
                csr: swarmgate_control::ca::new_key_and_csr().unwrap().1,
            })
            .await
            .unwrap_err();
        assert_eq!(
            no_cert_renew.code(),
            tonic::Code::PermissionDenied,
            "{no_cert_renew:?}"
        );
        // A second worker identity, obtained the way any node gets one.
        let j = agent::join(addr, &probe_token, &probe_desc())
            .await
            .unwrap();
        let cfg = tls::client_config(&j.root_pem, Some((&j.cert_pem, &j.key_pem))).unwrap();
        let beat = DispatcherClient::new(tls::channel(addr, cfg.clone()))
            .heartbeat(probe_beat())
            .await
            .map(|r| r.into_inner().period_ms);
        let health = HealthClient::new(tls::channel(addr, cfg))
            .check(capi::Empty {})
            .await
            .unwrap_err();
        (no_cert, j, beat, health)
    });
    assert_eq!(no_cert.code(), tonic::Code::PermissionDenied, "{no_cert:?}");
    assert_eq!(worker_beat.unwrap(), 5000);
    assert_eq!(
        worker_health.code(),
        tonic::Code::PermissionDenied,
        "{worker_health:?}"
    );
    let log = m.log();
    assert!(
        log.contains("refused heartbeat:") && log.contains("no client certificate"),
        "{log}"
    );
    assert!(
        log.contains("refused health check:") && log.contains("a worker may not call this"),
        "{log}"
    );

    // Node management: inspect, removal rules, certificate lifetime.
    let worker_id = node_rows(m)
        .into_iter()
        .find(|n| n["Addr"] == WORKER_IP && n["Hostname"] != "probe")
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect: serde_json::Value =
        serde_json::from_str(&m.ok(&format!("node inspect {worker_id}"))).unwrap();
    assert_eq!(inspect[0]["Spec"]["Role"], "worker", "{inspect}");
    assert_eq!(inspect[0]["Status"]["State"], "ready", "{inspect}");
    let out = m.err(&format!("node rm {worker_id}"));
    assert!(out.contains("is not down and can't be removed"), "{out}");
    let out = m.err(&format!("node rm {manager_id}"));
    assert!(
        out.contains("must be demoted to worker before removal"),
        "{out}"
    );
    let out = m.err("swarm update --cert-expiry 30m");
    assert!(
        out.contains("minimum certificate expiry time is 1h0m0s"),
        "{out}"
    );
    m.ok("swarm update --cert-expiry 2h");
    for bad in ["500ms", "2h"] {
        let out = m.err(&format!("swarm update --dispatcher-heartbeat {bad}"));
        assert!(out.contains("must be between 1s and 1h"), "{out}");
    }

    // The probe renews its certificate over mutual TLS: same node, same role, the new
    // lifetime; OpenSSL verifies it against the root. Once removed, it is refused.
    let (renewed, renewed_key) = in_netns(&w.ns, {
        let j = probe.clone();
        async move {
            let mut s =
                agent::Session::new(addr, &j.root_pem, &j.cert_pem, &j.key_pem, &probe_desc())
                    .unwrap();
            s.renew().await.unwrap()
        }
    });
    let renewed_file = write(&m.dir, "renewed.pem", &renewed);
    let verify = netns::run(&format!(
        "openssl verify -CAfile {} -purpose sslclient {}",
        root_file.display(),
        renewed_file.display()
    ));
    assert!(verify.contains(": OK"), "{verify}");
    let subject = netns::run(&format!(
        "openssl x509 -noout -subject -nameopt RFC2253 -in {}",
        renewed_file.display()
    ));
    assert!(
        subject.contains(&format!("CN={}", probe.identity.node_id)),
        "{subject}"
    );
    assert!(subject.contains("OU=swarm-worker"), "{subject}");
    let dates = netns::run(&format!(
        "openssl x509 -noout -startdate -enddate -dateopt iso_8601 -in {}",
        renewed_file.display()
    ));
    let stamp = |k: &str| {
        let v = dates
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_owned();
        netns::run(&format!("date -u -d '{v}' +%s"))
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(
        stamp("notAfter=") - stamp("notBefore="),
        2 * 3600 + 60,
        "{dates}"
    );
    m.ok(&format!("node rm --force {}", probe.identity.node_id));
    let refused = in_netns(&w.ns, async move {
        let cfg = tls::client_config(&probe.root_pem, Some((&renewed, &renewed_key))).unwrap();
        DispatcherClient::new(tls::channel(addr, cfg))
            .heartbeat(probe_beat())
            .await
            .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(m.log().contains("not a member"), "{}", m.log());

    // Placement as SwarmKit's scheduler decides it over the two nodes: constraints,
    // replicas per node, drain and pause; what cannot be placed is Pending with
    // SwarmKit's reason.
    let ps = |svc: &str| m.rows(&format!("service ps {svc}"));
    let state = |t: &serde_json::Value| {
        t["CurrentState"]
            .as_str()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    let count = |svc: &str, st: &str| ps(svc).iter().filter(|t| state(t) == st).count();
    let on = |svc: &str, node: &str| {
        ps(svc)
            .iter()
            .filter(|t| state(t) == "Running" && t["Node"] == node)
            .count()
    };
    let out = m.err("service create --name bad --constraint node.role=manager -- sleep 1000");
    assert!(
        out.contains("constraint expected one operator from ==, !="),
        "{out}"
    );
    m.ok(
        "service create --name east --replicas 2 --constraint node.labels.zone==east -- sleep 1000",
    );
    m.ok("service create --name capped --replicas 5 --replicas-max-per-node 2 -- sleep 1000");
    wait_for("capped: 2 running per node, 1 pending", 30, || {
        on("capped", "m") == 2 && on("capped", "w") == 2 && count("capped", "Pending") == 1
    });
    let pending = ps("capped")
        .into_iter()
        .find(|t| state(t) == "Pending")
        .unwrap();
    assert_eq!(
        pending["Error"], "no suitable node (max replicas per node limit exceed)",
        "{pending}"
    );
    wait_for("east: 2 pending", 20, || count("east", "Pending") == 2);
    assert!(
        ps("east")
            .iter()
            .all(|t| t["Error"]
                == "no suitable node (scheduling constraints not satisfied on 2 nodes)"),
        "{:?}",
        ps("east")
    );
    m.ok(&format!("node update --label-add zone=east {worker_id}"));
    wait_for(
        "east: 2 running on the worker once it has the label",
        30,
        || on("east", "w") == 2 && count("east", "Pending") == 0,
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&m.ok(&format!("node inspect {worker_id}"))).unwrap();
    assert_eq!(inspect[0]["Spec"]["Labels"]["zone"], "east", "{inspect}");
    m.ok(&format!("node update --availability drain {worker_id}"));
    wait_for("drained: nothing running on the worker", 30, || {
        on("east", "w") == 0 && on("capped", "w") == 0
    });
    assert_eq!(on("capped", "m"), 2);
    wait_for("east: 2 pending", 20, || count("east", "Pending") == 2);
    assert!(
        ps("east")
            .iter()
            .filter(|t| state(t) == "Pending")
            .all(|t| t["Error"]
                == "no suitable node (scheduling constraints not satisfied on 1 node)"),
        "{:?}",
        ps("east")
    );
    m.ok(&format!("node update --availability pause {worker_id}"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count("east", "Running"), 0, "paused: nothing new starts");
    m.ok(&format!("node update --availability active {worker_id}"));
    wait_for("active again: everything back", 30, || {
        on("east", "w") == 2 && count("capped", "Running") == 4
    });
    let out = m.err(&format!("node update --availability sleepy {worker_id}"));
    assert!(out.contains("invalid availability"), "{out}");
    m.ok("service rm east capped");

    // Failures. The status of the worker (by ID) on the manager:
    let status = |m: &Host| {
        node_rows(m)
            .into_iter()
            .find(|n| n["ID"] == worker_id.as_str())
            .map(|n| n["Status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    // Cut off (its link down): Down within the grace (3 heartbeat periods), Ready again
    // once the link is back, its session re-established by itself.
    netns::run(&format!("ip -n {} link set eth0 down", lan.hosts[1].ns));
    let down = wait_for("the cut-off worker Down", 30, || {
        status(&lan.hosts[0]) == "Down"
    });
    netns::run(&format!("ip -n {} link set eth0 up", lan.hosts[1].ns));
    let back = wait_for("the worker Ready again", 30, || {
        status(&lan.hosts[0]) == "Ready"
    });
    eprintln!(
        "cut-off worker Down after {:.1} s; Ready {:.1} s after its link came back",
        down.as_secs_f64(),
        back.as_secs_f64()
    );
    // The manager restarts: same cluster, same tokens, the worker Ready again.
    let token_before = lan.hosts[0].ok("swarm join-token -q worker");
    lan.hosts[0].stop();
    lan.hosts[0].start();
    assert_eq!(lan.hosts[0].ok("swarm join-token -q worker"), token_before);
    let again = wait_for("the worker Ready after the manager restarted", 30, || {
        status(&lan.hosts[0]) == "Ready"
    });
    eprintln!(
        "worker Ready {:.1} s after the manager restarted",
        again.as_secs_f64()
    );

    // Removed by a manager while up (`node rm --force`): the worker is told at its next
    // heartbeat and leaves the swarm by itself instead of knocking forever.
    lan.hosts[0].ok(&format!("node rm --force {worker_id}"));
    let left = wait_for("the removed worker leaves the swarm", 30, || {
        // `node ls` on a node in no swarm points at `swarm init`; on a worker it says
        // workers cannot view the cluster.
        let (ok, out) = lan.hosts[1].cli("node ls");
        !ok && out.contains("swarm init")
    });
    eprintln!(
        "removed worker left the swarm {:.1} s after node rm",
        left.as_secs_f64()
    );
    assert!(
        lan.hosts[1]
            .log()
            .contains("removed from the swarm by a manager"),
        "{}",
        lan.hosts[1].log()
    );
}
