//! Where a task may run and where it goes: SwarmKit's scheduler filters and ranking, as pure
//! logic over a list of nodes.
//!
//! References (moby/swarmkit): `manager/constraint/constraint.go` (`Parse`, `Match`,
//! `NodeMatches`: `key==value` / `key!=value`, keys `node.id`, `node.hostname`, `node.ip`,
//! `node.role`, `node.labels.<name>`, values compared case-insensitively);
//! `manager/scheduler/filter.go` (`ReadyFilter` — ready and `active` availability,
//! `ConstraintFilter`, `MaxReplicasFilter`, each with its `Explain` text);
//! `manager/scheduler/scheduler.go` (`"no suitable node (" + explanation + ")"`) and
//! `nodeinfo.go`/`indexed_node_heap.go` (rank: fewest tasks of this service, then fewest
//! tasks overall).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What the filters see of a node.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Node ID.
    pub id: &'a str,
    /// Host name.
    pub hostname: &'a str,
    /// Address.
    pub addr: Ipv4Addr,
    /// `manager` or `worker`.
    pub role: &'a str,
    /// `active`, `pause` or `drain`.
    pub availability: &'a str,
    /// Node labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Up (heartbeats arriving, or this node with its data plane forwarding).
    pub ready: bool,
    /// Live tasks of the service being placed.
    pub service_tasks: usize,
    /// Live tasks of all services.
    pub tasks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
}

/// One `--constraint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: String,
    op: Op,
    value: String,
}

fn key_ok(k: &str) -> bool {
    let mut c = k.chars();
    k.len() >= 2
        && c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || "-_.".contains(x))
}

fn value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.chars().all(|x| {
            x.is_ascii_alphanumeric() || ":-_ .*()?+[]\\^$|/".contains(x) || x.is_whitespace()
        })
}

/// Parses `--constraint` expressions (`constraint.Parse`), each error one line.
pub fn parse_constraints(exprs: &[String]) -> Result<Vec<Constraint>, String> {
    let mut out = Vec::new();
    for e in exprs {
        let (op, sep) = if e.contains("==") {
            (Op::Eq, "==")
        } else if e.contains("!=") {
            (Op::Ne, "!=")
        } else {
            return Err("constraint expected one operator from ==, !=".into());
        };
        let (k, v) = e.split_once(sep).expect("contains the operator");
        let (k, v) = (k.trim(), v.trim());
        if !key_ok(k) {
            return Err(format!("key '{k}' is invalid"));
        }
        if !value_ok(v) {
            return Err(format!("value '{v}' is invalid"));
        }
        out.push(Constraint {
            key: k.to_owned(),
            op,
            value: v.to_owned(),
        });
    }
    Ok(out)
}

impl Constraint {
    fn test(&self, what: Option<&str>) -> bool {
        let m = what.is_some_and(|w| w.eq_ignore_ascii_case(&self.value));
        match self.op {
            Op::Eq => m,
            Op::Ne => !m,
        }
    }

    /// Whether `n` satisfies this constraint (`NodeMatches`); an unknown key matches
    /// nothing.
    pub fn matches(&self, n: &Candidate<'_>) -> bool {
        let k = self.key.to_ascii_lowercase();
        match k.as_str() {
            "node.id" => self.test(Some(n.id)),
            "node.hostname" => self.test(Some(n.hostname)),
            "node.ip" => self.test(Some(&n.addr.to_string())),
            "node.role" => self.test(Some(n.role)),
            _ => match k.strip_prefix("node.labels.") {
                // A missing label is "" for == and != alike, as SwarmKit compares.
                Some(_) => {
                    let name = &self.key["node.labels.".len()..];
                    self.test(Some(n.labels.get(name).map_or("", String::as_str)))
                }
                None => false,
            },
        }
    }
}

/// What a task asks of its node.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// `--constraint`s, all of which must hold.
    pub constraints: Vec<Constraint>,
    /// `--replicas-max-per-node` (0: no limit).
    pub max_per_node: u64,
}

/// Picks the node for one more task of a service among `nodes`: the filters in SwarmKit's
/// order, then the lowest rank. `Err` carries SwarmKit's explanation for `service ps`:
/// `no suitable node (…)`, naming the first filter that left no node.
pub fn place(nodes: &[Candidate<'_>], p: &Placement) -> Result<usize, String> {
    let nodes_word = |n: usize| match n {
        1 => "1 node".to_owned(),
        n => format!("{n} nodes"),
    };
    let mut left: Vec<usize> = (0..nodes.len()).collect();
    if left.is_empty() {
        return Err("no suitable node".into());
    }
    let before = left.len();
    left.retain(|&i| nodes[i].ready && nodes[i].availability == "active");
    if left.is_empty() {
        return Err(format!(
            "no suitable node ({} not available for new tasks)",
            nodes_word(before)
        ));
    }
    let before = left.len();
    left.retain(|&i| p.constraints.iter().all(|c| c.matches(&nodes[i])));
    if left.is_empty() {
        return Err(format!(
            "no suitable node (scheduling constraints not satisfied on {})",
            nodes_word(before)
        ));
    }
    if p.max_per_node > 0 {
        left.retain(|&i| (nodes[i].service_tasks as u64) < p.max_per_node);
        if left.is_empty() {
            return Err("no suitable node (max replicas per node limit exceed)".into());
        }
    }
    Ok(*left
        .iter()
        .min_by_key(|&&i| (nodes[i].service_tasks, nodes[i].tasks, nodes[i].id))
        .expect("not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(id: &'a str, labels: &'a BTreeMap<String, String>) -> Candidate<'a> {
        Candidate {
            id,
            hostname: id,
            addr: Ipv4Addr::new(10, 0, 0, 1),
            role: "worker",
            availability: "active",
            labels,
            ready: true,
            service_tasks: 0,
            tasks: 0,
        }
    }

    fn c(e: &[&str]) -> Vec<Constraint> {
        parse_constraints(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn constraint_syntax_as_swarmkit_parses_it() {
        assert!(parse_constraints(&["node.role==manager".into()]).is_ok());
        assert!(parse_constraints(&[" node.labels.zone != east ".into()]).is_ok());
        for (bad, why) in [
            (
                "node.role=manager",
                "constraint expected one operator from ==, !=",
            ),
            ("==x", "key '' is invalid"),
            ("node.role==", "value '' is invalid"),
            ("9node==x", "key '9node' is invalid"),
            ("node.role==a;b", "value 'a;b' is invalid"),
        ] {
            assert_eq!(parse_constraints(&[bad.into()]), Err(why.into()), "{bad}");
        }
    }

    #[test]
    fn constraints_match_role_hostname_labels_case_insensitively() {
        let mut l = BTreeMap::new();
        l.insert("zone".to_owned(), "East".to_owned());
        let n = node("n1", &l);
        assert!(c(&["node.labels.zone==east"])[0].matches(&n));
        assert!(!c(&["node.labels.zone!=east"])[0].matches(&n));
        assert!(
            c(&["node.labels.rack!=r1"])[0].matches(&n),
            "missing label is \"\""
        );
        assert!(!c(&["node.labels.rack==r1"])[0].matches(&n));
        assert!(c(&["node.role==WORKER"])[0].matches(&n));
        assert!(c(&["node.hostname==n1"])[0].matches(&n));
        assert!(c(&["node.ip==10.0.0.1"])[0].matches(&n));
        assert!(
            !c(&["engine.labels.x==y"])[0].matches(&n),
            "unknown keys match nothing"
        );
    }

    /// Replicated tasks spread: fewest of this service first, then fewest overall.
    #[test]
    fn spread_by_service_then_total() {
        let l = BTreeMap::new();
        let mut ns = vec![node("a", &l), node("b", &l), node("c", &l)];
        ns[0].service_tasks = 1;
        ns[1].tasks = 5;
        let p = Placement::default();
        assert_eq!(place(&ns, &p), Ok(2), "c: no tasks at all");
        ns[2].service_tasks = 1;
        ns[2].tasks = 1;
        assert_eq!(
            place(&ns, &p),
            Ok(1),
            "b: fewest of this service wins over total"
        );
        // Six replicas over three nodes: two each.
        let mut ns = vec![node("a", &l), node("b", &l), node("c", &l)];
        for _ in 0..6 {
            let i = place(&ns, &p).unwrap();
            ns[i].service_tasks += 1;
            ns[i].tasks += 1;
        }
        assert!(ns.iter().all(|n| n.service_tasks == 2));
    }

    #[test]
    fn unavailable_nodes_and_explanations() {
        let l = BTreeMap::new();
        let mut ns = vec![node("a", &l)];
        ns[0].availability = "drain";
        let p = Placement::default();
        assert_eq!(
            place(&ns, &p),
            Err("no suitable node (1 node not available for new tasks)".into())
        );
        ns[0].availability = "pause";
        assert!(place(&ns, &p).is_err());
        ns[0].availability = "active";
        ns[0].ready = false;
        assert!(place(&ns, &p).is_err());
        ns.push(node("b", &l));
        ns.push(node("c", &l));
        ns[1].availability = "drain";
        ns[2].availability = "drain";
        assert_eq!(
            place(&ns, &p),
            Err("no suitable node (3 nodes not available for new tasks)".into())
        );
        let ns = vec![node("a", &l), node("b", &l)];
        let p = Placement {
            constraints: c(&["node.role==manager"]),
            max_per_node: 0,
        };
        assert_eq!(
            place(&ns, &p),
            Err("no suitable node (scheduling constraints not satisfied on 2 nodes)".into())
        );
        assert_eq!(
            place(&ns[..1], &p),
            Err("no suitable node (scheduling constraints not satisfied on 1 node)".into())
        );
        let mut ns = vec![node("a", &l)];
        ns[0].service_tasks = 2;
        let p = Placement {
            constraints: vec![],
            max_per_node: 2,
        };
        assert_eq!(
            place(&ns, &p),
            Err("no suitable node (max replicas per node limit exceed)".into())
        );
        assert_eq!(
            place(&[], &Placement::default()),
            Err("no suitable node".into())
        );
    }
}
