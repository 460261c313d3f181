//! What goes into the Raft log: the changes one accepted request made to the cluster state,
//! as object-level actions (SwarmKit's `StoreAction`s, `api/raft.proto`, proposed by
//! `manager/state/store/memory.go` `Update` through `raft.go` `ProposeValue`).
//!
//! The manager that accepts a request runs it against its copy of the state, choosing every
//! ID and timestamp itself; the difference between the state before and after, object by
//! object, is the command. Applying a command is a pure function of the state and the
//! command, so every manager that applies the same log holds the same state.
//!
//! Objects are addressed by a path into the state's JSON document: the top-level field and,
//! where that field is a map (tasks, services' metadata, …), the key inside it. Fields that
//! are not maps (the node list, the networks with their IPAM) are replaced whole.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One object created, changed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// The object at `path` is now `value` (created or updated).
    Put {
        /// Field, then key within it; empty: the whole state.
        path: Vec<String>,
        /// The object.
        value: Value,
    },
    /// The object at `path` is gone.
    Remove {
        /// Field, then key within it.
        path: Vec<String>,
    },
}

/// The actions of one request, applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// In order.
    pub actions: Vec<Action>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} action(s)", self.actions.len())
    }
}

impl Command {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The command that turns `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Command {
    let mut actions = Vec::new();
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (field, nv) in n {
                match (o.get(field), nv) {
                    (Some(ov), _) if ov == nv => {}
                    (Some(Value::Object(om)), Value::Object(nm)) => {
                        diff_map(field, om, nm, &mut actions)
                    }
                    _ => actions.push(Action::Put {
                        path: vec![field.clone()],
                        value: nv.clone(),
                    }),
                }
            }
            for field in o.keys().filter(|k| !n.contains_key(*k)) {
                actions.push(Action::Remove {
                    path: vec![field.clone()],
                });
            }
        }
        _ if old == new => {}
        _ => actions.push(Action::Put {
            path: Vec::new(),
            value: new.clone(),
        }),
    }
    Command { actions }
}

fn diff_map(field: &str, o: &Map<String, Value>, n: &Map<String, Value>, out: &mut Vec<Action>) {
    for (k, nv) in n {
        if o.get(k) != Some(nv) {
            out.push(Action::Put {
                path: vec![field.to_owned(), k.clone()],
                value: nv.clone(),
            });
        }
    }
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        out.push(Action::Remove {
            path: vec![field.to_owned(), k.clone()],
        });
    }
}

/// Applies `cmd` to `state`. A path that does not fit the state (longer than two, or
/// through something that is not a map) is an error and nothing is changed.
pub fn apply(state: &mut Value, cmd: &Command) -> Result<(), String> {
    let mut next = state.clone();
    for a in &cmd.actions {
        match a {
            Action::Put { path, value } => match path.as_slice() {
                [] => next = value.clone(),
                [field] => {
                    object(&mut next, "the state")?.insert(field.clone(), value.clone());
                }
                [field, key] => {
                    let root = object(&mut next, "the state")?;
                    let m = root
                        .entry(field.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    object(m, field)?.insert(key.clone(), value.clone());
                }
                _ => return Err(format!("path {path:?} is too deep")),
            },
            Action::Remove { path } => match path.as_slice() {
                [field] => {
                    object(&mut next, "the state")?.remove(field);
                }
                [field, key] => {
                    if let Some(m) = object(&mut next, "the state")?.get_mut(field) {
                        object(m, field)?.remove(key);
                    }
                }
                _ => return Err(format!("cannot remove {path:?}")),
            },
        }
    }
    *state = next;
    Ok(())
}

fn object<'a>(v: &'a mut Value, what: &str) -> Result<&'a mut Map<String, Value>, String> {
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
        .ok_or_else(|| format!("{what} is not a map"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_change_to_one_task_is_one_action() {
        let old = json!({"tasks": {"a": {"s": 1}, "b": {"s": 1}}, "nodes": [1], "swarm": null});
        let new = json!({"tasks": {"a": {"s": 2}, "b": {"s": 1}}, "nodes": [1], "swarm": null});
        let c = diff(&old, &new);
        assert_eq!(
            c.actions,
            vec![Action::Put {
                path: vec!["tasks".into(), "a".into()],
                value: json!({"s": 2})
            }]
        );
        let mut s = old.clone();
        apply(&mut s, &c).unwrap();
        assert_eq!(s, new);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn the_first_command_carries_the_whole_state_and_bad_paths_change_nothing() {
        let new = json!({"tasks": {}, "nodes": []});
        let c = diff(&Value::Null, &new);
        let mut s = Value::Null;
        apply(&mut s, &c).unwrap();
        assert_eq!(s, new);
        let bad = Command {
            actions: vec![
                Action::Remove {
                    path: vec!["nodes".into()],
                },
                Action::Put {
                    path: vec!["nodes".into(), "x".into(), "y".into()],
                    value: json!(1),
                },
            ],
        };
        assert!(apply(&mut s, &bad).is_err());
        assert_eq!(s, new, "all or nothing");
    }

    fn state() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![Just(json!(1)), Just(json!("x")), Just(json!([1, 2]))];
        let map = prop::collection::btree_map("[a-d]", leaf.clone(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()));
        let field = prop_oneof![leaf, map];
        prop::collection::btree_map("[a-d]", field, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_new_state(old in state(), new in state()) {
            let mut s = old.clone();
            apply(&mut s, &diff(&old, &new)).unwrap();
            prop_assert_eq!(s, new);
        }
    }
}
