//! Three managers replicating the swarm with Raft (each a network namespace with its own
//! host name, `swarmgate daemon` and DPDK gateway): two join with the manager token and
//! become voters; writes typed on any manager reach the leader and every manager's copy;
//! `node ls` shows the Leader and the Reachable managers; a manager's `swarm leave` is
//! refused with Docker's quorum reasons; the leader killed with SIGKILL is replaced, the
//! committed state is all there and writes are accepted again (the time is printed), its
//! tasks are placed on the survivors; restarted after the others compacted their logs
//! past it, it catches up from the leader's snapshot and follows the new leader.
//!
//! Needs root.

use swarmgate_tests::netns;
use swarmgate_tests::swarm::{wait_until, Host, Lan};

/// (host name, MANAGER STATUS) of every node, as `node ls` on `h` shows them.
fn managers(h: &Host) -> Result<Vec<(String, String)>, String> {
    let (ok, out) = h.cli("node ls --format json");
    if !ok {
        return Err(out);
    }
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                r["Hostname"].as_str().unwrap_or("").to_owned(),
                r["ManagerStatus"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

fn running_nodes(h: &Host, service: &str) -> Result<Vec<String>, String> {
    let (ok, out) = h.cli(&format!("service ps {service} --format json"));
    if !ok {
        return Err(out);
    }
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|t| {
            t["DesiredState"] == "Running"
                && t["CurrentState"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Running")
        })
        .map(|t| t["Node"].as_str().unwrap_or("").to_owned())
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn three_managers_replicate_the_swarm_and_survive_the_leader() {
    if !netns::root_or_skip("three_managers_replicate_the_swarm_and_survive_the_leader") {
        return;
    }
    let (mut lan, joins) = Lan::swarm(
        "rf",
        62,
        &["mgr1", "mgr2", "mgr3"],
        "--dispatcher-heartbeat 1s",
        "manager",
    );
    for out in joins {
        assert!(
            out.contains("This node joined a swarm as a manager."),
            "{out}"
        );
    }
    let [m1, m2, m3] = &mut lan.hosts[..] else {
        unreachable!()
    };
    let expected = |leader: &str, others: &[&str]| {
        let mut v: Vec<(String, String)> =
            std::iter::once((leader.to_owned(), "Leader".to_owned()))
                .chain(
                    others
                        .iter()
                        .map(|o| (o.to_string(), "Reachable".to_owned())),
                )
                .collect();
        v.sort();
        v
    };
    let all = expected("mgr1", &["mgr2", "mgr3"]);
    // Every manager answers `node ls` (the followers through the leader).
    for h in [&*m1, &*m2, &*m3] {
        wait_until("three managers, one leader", 60, || {
            let v = managers(h)?;
            (v == all).then_some(()).ok_or(format!("{v:?}"))
        });
    }

    // Writes on the followers reach the leader.
    m2.ok("network create -d overlay --subnet 10.62.0.0/24 net1");
    m3.ok("service create --name web --replicas 3 --network net1 -- sleep 100000");
    let ls = m1.ok("service ls");
    assert!(ls.contains("web"), "{ls}");
    wait_until("a task on each manager", 60, || {
        let v = running_nodes(m1, "web")?;
        (v == ["mgr1", "mgr2", "mgr3"])
            .then_some(())
            .ok_or(format!("{v:?}"))
    });

    // Leaving as a manager needs --force (Docker's refusal; the quorum would hold).
    let out = m2.err("swarm leave");
    assert!(
        out.contains("participating as a manager")
            && !out.contains("Without a Raft quorum")
            && out.contains("--force-new-cluster"),
        "{out}"
    );

    // Snapshots every 10 entries (Docker's `--snapshot-interval`), so that a manager
    // away for a while catches up from a snapshot; refused out of bounds.
    let out = m1.err("swarm update --snapshot-interval 1");
    assert!(out.contains("invalid snapshot interval 1"), "{out}");
    m1.ok("swarm update --snapshot-interval 10");

    // The leader dies.
    let (_, ps) = m1.cli("service ps web --format json");
    let on_m1: String = ps
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|t| t["Node"] == "mgr1" && t["DesiredState"] == "Running")
        .and_then(|t| t["ID"].as_str().map(str::to_owned))
        .expect("a task on mgr1");
    // `network inspect`'s fields that no task placement changes.
    let inspect = |h: &Host| {
        let v: serde_json::Value = serde_json::from_str(&h.ok("network inspect net1")).unwrap();
        ["Id", "Name", "IPAM", "Options", "Created"].map(|k| v[0][k].clone())
    };
    let before = inspect(&*m2);
    let m1_last = raft_stat(m1, "last_log_index");
    m1.kill();
    let killed = std::time::Instant::now();
    let mut leader = String::new();
    wait_until("a new leader", 30, || {
        let v = managers(&*m2)?;
        let l = v
            .iter()
            .find(|(_, s)| s == "Leader")
            .ok_or(format!("{v:?}"))?;
        leader = l.0.clone();
        Ok(())
    });
    let elected = killed.elapsed();
    wait_until("a write accepted again", 30, || {
        let (ok, out) = m3.cli("network create -d overlay --subnet 10.62.1.0/24 net2");
        ok.then_some(()).ok_or(out)
    });
    let writable = killed.elapsed();
    println!(
        "leader killed: {leader} elected after {:.2} s, writes accepted after {:.2} s",
        elected.as_secs_f64(),
        writable.as_secs_f64()
    );
    assert!(leader == "mgr2" || leader == "mgr3", "{leader}");
    assert!(
        writable < std::time::Duration::from_secs(10),
        "failover took {writable:?}"
    );
    // Nothing committed was lost.
    assert_eq!(inspect(&*m3), before);
    assert!(m2.ok("service ls").contains("web"));
    // The dead manager is Unreachable; its task is placed on a survivor.
    wait_until("mgr1 Unreachable, its task elsewhere", 60, || {
        let v = managers(&*m2)?;
        let m1_status = v.iter().find(|(n, _)| n == "mgr1").map(|x| x.1.clone());
        let nodes = running_nodes(&*m2, "web")?;
        (m1_status.as_deref() == Some("Unreachable")
            && nodes.len() == 3
            && !nodes.contains(&"mgr1".to_owned()))
        .then_some(())
        .ok_or(format!("{v:?} {nodes:?}"))
    });

    // While it is away, the others log past what it has and compact.
    for i in 0..30 {
        m2.ok(&format!("node update --label-add k{i}=v mgr2"));
    }
    let lead = lan_host(&[&*m2, &*m3], &leader);
    wait_until("the leader's log purged past what mgr1 has", 30, || {
        let purged = raft_stat(lead, "purged_index");
        (purged > m1_last)
            .then_some(())
            .ok_or(format!("purged up to {purged}, mgr1 has up to {m1_last}"))
    });

    // With one manager gone, another leaving would lose the quorum: said so.
    let out = m2.err("swarm leave");
    assert!(
        out.contains("Removing this node leaves 1 managers out of 3. Without a Raft quorum"),
        "{out}"
    );

    // Back, it follows the new leader, catches up and stops its stale task.
    m1.start();
    let back = expected(
        &leader,
        &[if leader == "mgr2" { "mgr3" } else { "mgr2" }, "mgr1"],
    );
    wait_until("mgr1 back as a follower", 60, || {
        let v = managers(&*m1)?;
        (v == back).then_some(()).ok_or(format!("{v:?}"))
    });
    let out = m1.ok("network ls");
    assert!(out.contains("net2"), "{out}");
    wait_until("mgr1 caught up from the leader's snapshot", 30, || {
        m1.log()
            .contains("raft: installed a snapshot from the leader")
            .then_some(())
            .ok_or_else(|| m1.log())
    });
    let labels = m1.ok("node inspect mgr2");
    assert!(labels.contains("k29"), "{labels}");
    wait_until("mgr1's stale task stopped", 60, || {
        let ns = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let ns = String::from_utf8_lossy(&ns.stdout);
        let v = running_nodes(&*m1, "web")?;
        (v.len() == 3 && !v.contains(&"mgr1".to_owned()) && !ns.contains(on_m1.as_str()))
            .then_some(())
            .ok_or(format!("{v:?}"))
    });

    // The leader demoted (typed on another manager): it takes itself out of Raft, the
    // other two elect a leader, and it carries on as a worker.
    let out = m1.ok(&format!("node demote {leader}"));
    assert!(out.contains("demoted in the swarm"), "{out}");
    let old = lan_host(&[&*m1, &*m2, &*m3], &leader);
    wait_until("the old leader a worker, two managers left", 60, || {
        let v = managers(&*m1)?;
        let (ok, out) = old.cli("node ls");
        let statuses: Vec<&str> = v.iter().map(|(_, s)| s.as_str()).collect();
        let two = statuses.iter().filter(|s| **s == "Leader").count() == 1
            && statuses.iter().filter(|s| **s == "Reachable").count() == 1;
        (two && !ok && out.contains("This node is not a swarm manager"))
            .then_some(())
            .ok_or(format!("{v:?} {out}"))
    });
    m1.ok("network create -d overlay --subnet 10.62.2.0/24 net3");
    m1.ok("service rm web");
}

fn lan_host<'a>(hosts: &[&'a Host], name: &str) -> &'a Host {
    hosts.iter().find(|h| h.name == name).copied().unwrap()
}

#[test]
fn workers_are_promoted_and_demoted_and_a_lost_quorum_is_recovered() {
    if !netns::root_or_skip("workers_are_promoted_and_demoted_and_a_lost_quorum_is_recovered") {
        return;
    }
    let (mut lan, _) = Lan::swarm(
        "rp",
        63,
        &["na", "nb", "nc"],
        "--dispatcher-heartbeat 1s",
        "worker",
    );
    let [a, b, c] = &mut lan.hosts[..] else {
        unreachable!()
    };
    let out = a.err("node demote na");
    assert!(
        out.contains("attempting to demote the last manager of the swarm"),
        "{out}"
    );

    // Promoted: each renews its certificate as a manager and joins Raft.
    let out = a.ok("node promote nb nc");
    assert!(
        out.contains("Node nb promoted to a manager in the swarm."),
        "{out}"
    );
    wait_until("nb and nc Reachable managers", 60, || {
        let v = managers(&*a)?;
        let want = vec![
            ("na".to_owned(), "Leader".to_owned()),
            ("nb".to_owned(), "Reachable".to_owned()),
            ("nc".to_owned(), "Reachable".to_owned()),
        ];
        (v == want).then_some(()).ok_or(format!("{v:?}"))
    });
    wait_until("nc takes cluster commands", 30, || {
        let (ok, out) = c.cli("network create -d overlay --subnet 10.63.0.0/24 onc");
        ok.then_some(()).ok_or(out)
    });

    // Demoted: out of Raft, a worker again, its Raft log gone.
    let out = a.ok("node demote nc");
    assert!(out.contains("Manager nc demoted in the swarm."), "{out}");
    wait_until("nc a worker", 60, || {
        let v = managers(&*a)?;
        let (ok, out) = c.cli("node ls");
        let raft_gone = !c.dir.join("data/raft.redb").exists();
        (!ok && out.contains("This node is not a swarm manager")
            && v.contains(&("nc".to_owned(), String::new()))
            && raft_gone)
            .then_some(())
            .ok_or(format!("{v:?} {out} raft log gone: {raft_gone}"))
    });

    let voters = raft_voters(a);
    assert_eq!(voters.len(), 2, "nc left Raft: {voters:?}");

    // Two managers; one dies: no quorum, writes refused in bounded time.
    b.kill();
    let t = std::time::Instant::now();
    let out = a.err("network create -d overlay --subnet 10.63.1.0/24 lost");
    assert!(
        out.contains("not committed in time") || out.contains("does not have a leader"),
        "{out}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        t.elapsed()
    );

    // Recovered from the survivor's state.
    let out = a.ok("swarm init --force-new-cluster");
    assert!(out.contains("Swarm initialized"), "{out}");
    wait_until("writes accepted again", 30, || {
        let (ok, out) = a.cli("network create -d overlay --subnet 10.63.1.0/24 found");
        ok.then_some(()).ok_or(out)
    });
    let nets = a.ok("network ls");
    assert!(nets.contains("onc") && nets.contains("found"), "{nets}");
    wait_until("nb Unreachable, nc a worker", 30, || {
        let v = managers(&*a)?;
        (v.contains(&("na".to_owned(), "Leader".to_owned()))
            && v.contains(&("nb".to_owned(), "Unreachable".to_owned()))
            && v.contains(&("nc".to_owned(), String::new())))
        .then_some(())
        .ok_or(format!("{v:?}"))
    });
    // The worker follows the new group's leader.
    wait_until("nc Ready", 30, || {
        let out = a.ok("node ls --format json");
        out.lines()
            .any(|l| l.contains("\"nc\"") && l.contains("\"Ready\""))
            .then_some(())
            .ok_or(out)
    });
    // The manager left behind comes back with the old group's log: it cannot take the new
    // group over (its Raft messages are refused), stays Unreachable, and is demoted.
    b.start();
    std::thread::sleep(std::time::Duration::from_secs(5));
    let v = managers(a).unwrap();
    assert!(v.contains(&("na".to_owned(), "Leader".to_owned())), "{v:?}");
    assert!(
        v.contains(&("nb".to_owned(), "Unreachable".to_owned())),
        "{v:?}"
    );
    assert_eq!(raft_voters(a).len(), 1);
    a.ok("network create -d overlay --subnet 10.63.2.0/24 after");
    a.ok("node demote nb");
    wait_until("nb a worker", 60, || {
        let (ok, out) = b.cli("node ls");
        let gone = !b.dir.join("data/raft.redb").exists();
        (!ok && out.contains("This node is not a swarm manager") && gone)
            .then_some(())
            .ok_or(format!("{out} raft log gone: {gone}"))
    });
    let nets = a.ok("network ls");
    assert!(nets.contains("after") && nets.contains("found"), "{nets}");
}

/// A number from manager `h`'s Raft statistics.
fn raft_stat(h: &Host, key: &str) -> u64 {
    let s: serde_json::Value = serde_json::from_str(&h.ok("stats")).unwrap();
    s["raft"][key].as_u64().unwrap_or(0)
}

/// The Raft voters (node IDs) as manager `h` knows them.
fn raft_voters(h: &Host) -> Vec<String> {
    let s: serde_json::Value = serde_json::from_str(&h.ok("stats")).unwrap();
    s["raft"]["voters"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
