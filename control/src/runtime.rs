//! The node runtime's cluster side: what runs because of this node's place in the swarm —
//! the 2377 listener on a manager, the heartbeat session on a worker — started, restarted
//! and stopped to match the state ([`crate::daemon`]'s `want`). Checked after every
//! membership change and on every housekeeping tick, so a listener that could not bind or
//! a session whose manager is away is retried.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::agent::{Description, Session};
use crate::daemon::{Api, Want};
use crate::remote::Remote;

/// What is running now.
#[derive(Default)]
pub struct ClusterRuntime {
    running: Option<Running>,
    /// The last start failure logged, so a retry every tick logs it once.
    failed: Option<String>,
}

struct Running {
    want: Want,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl ClusterRuntime {
    /// Makes what runs match what the state wants.
    pub async fn ensure(&mut self, api: &Api) {
        let want = match api.call(|d| Ok(d.want())).await {
            Ok(w) => w.into_inner(),
            Err(e) => {
                tracing::error!("cluster runtime: {}", e.message());
                return;
            }
        };
        if let Some(r) = &self.running {
            if r.want == want && !r.task.is_finished() {
                return;
            }
        }
        self.stop().await;
        self.running = match want.clone() {
            Want::Nothing => None,
            Want::Listener {
                listen,
                root,
                cert,
                key,
            } => {
                let tls = match crate::tls::server_config(&root, &cert, &key) {
                    Ok(t) => t,
                    Err(e) => {
                        self.failure(format!("2377: TLS configuration: {e:#}"));
                        return;
                    }
                };
                let listener = match tokio::net::TcpListener::bind(&listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        self.failure(format!(
                            "2377: failed to listen on {listen}: {e} (retrying)"
                        ));
                        return;
                    }
                };
                tracing::info!(%listen, "managing the swarm (mutual TLS on 2377)");
                let (tx, rx) = oneshot::channel();
                // Callers are authorised against the cluster this certificate is from.
                let cluster_id = match crate::ca::pem_der(&cert, "node certificate")
                    .and_then(|d| crate::ca::identity(&d))
                {
                    Ok(id) => id.cluster_id,
                    Err(e) => {
                        self.failure(format!("2377: this node's certificate: {e}"));
                        return;
                    }
                };
                let remote = Remote::new(api.clone(), &cluster_id);
                let task = tokio::spawn(async move {
                    let shutdown = async {
                        let _ = rx.await;
                    };
                    if let Err(e) = remote.serve(listener, tls, shutdown).await {
                        tracing::error!("2377: {e:#}");
                    }
                });
                Some(Running {
                    want,
                    task,
                    stop: Some(tx),
                })
            }
            Want::Session {
                manager,
                root,
                cert,
                key,
                me,
            } => {
                let me = Description {
                    hostname: me.0,
                    advertise_addr: me.1,
                    datapath_addr: me.2,
                };
                let mut session = match Session::new(manager, &root, &cert, &key, &me) {
                    Ok(s) => s,
                    Err(e) => {
                        self.failure(format!("session with manager {manager}: {e}"));
                        return;
                    }
                };
                let api = api.clone();
                let reported = match api.call(|d| Ok(d.report_signal())).await {
                    Ok(n) => n.into_inner(),
                    Err(e) => {
                        self.failure(format!("session: {}", e.message()));
                        return;
                    }
                };
                let follow = follow_assignments(
                    api.clone(),
                    manager,
                    (root.clone(), cert.clone(), key.clone()),
                    me.clone(),
                );
                let task = tokio::spawn(async move {
                    // The assignments stream lives as long as the heartbeat loop.
                    let _follow = AbortOnDrop(tokio::spawn(follow));
                    let mut failing = false;
                    loop {
                        if session.renewal_due() {
                            // Stored in the state, the new certificate changes what is
                            // wanted: the next `ensure` restarts the session with it.
                            match session.renew().await {
                                Ok((cert, key)) => {
                                    match api
                                        .call(move |d| d.store_node_certificate(cert, key))
                                        .await
                                    {
                                        Ok(_) => return, // restarted with the new one
                                        Err(e) => tracing::error!(
                                            "keeping the renewed certificate: {}",
                                            e.message()
                                        ),
                                    }
                                }
                                Err(e) => tracing::warn!(%manager, "certificate renewal: {e}"),
                            }
                        }
                        let tasks = match api.call(|d| Ok(d.task_reports())).await {
                            Ok(t) => t.into_inner(),
                            Err(e) => {
                                tracing::error!("task states: {}", e.message());
                                Vec::new()
                            }
                        };
                        let wait = match session.beat(tasks).await {
                            Ok(period) => {
                                if failing {
                                    tracing::info!(%manager, "session with the manager restored");
                                    failing = false;
                                }
                                period
                            }
                            Err(e) if e.contains("is not a member of this swarm") => {
                                if let Err(e) = api.call(|d| d.removed_by_manager()).await {
                                    tracing::error!("leaving the swarm: {}", e.message());
                                }
                                return;
                            }
                            Err(e) => {
                                if !failing {
                                    tracing::warn!(%manager, "heartbeat failed: {e}");
                                    failing = true;
                                }
                                // A fresh connection next time, rather than waiting out the
                                // broken one's reconnect backoff.
                                if let Ok(s) = Session::new(manager, &root, &cert, &key, &me) {
                                    session = s;
                                }
                                Duration::from_secs(1)
                            }
                        };
                        // The next beat when the period is over, or at once when a
                        // task changes state.
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = reported.notified() => {}
                        }
                    }
                });
                Some(Running {
                    want,
                    task,
                    stop: None,
                })
            }
        };
        if self.running.is_some() {
            self.failed = None;
        }
    }

    fn failure(&mut self, why: String) {
        if self.failed.as_ref() != Some(&why) {
            tracing::error!("{why}");
            self.failed = Some(why);
        }
    }

    /// Stops whatever runs.
    pub async fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            match r.stop.take() {
                Some(tx) => {
                    let _ = tx.send(());
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut r.task).await;
                    r.task.abort();
                }
                None => r.task.abort(),
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows this worker's assignments from its manager: every set received is handed to
/// the daemon ([`crate::daemon::Api`]'s `assign`); a broken stream is opened again after
/// a second. Runs until aborted.
async fn follow_assignments(
    api: Api,
    manager: std::net::SocketAddr,
    (root, cert, key): (String, String, String),
    me: Description,
) {
    let mut failing: Option<String> = None;
    loop {
        let r: Result<(), String> = async {
            let mut session = Session::new(manager, &root, &cert, &key, &me)?;
            let mut stream = session.assignments().await?;
            while let Some(m) = stream.message().await.map_err(|e| e.message().to_owned())? {
                let a: crate::dispatcher::Assignment = serde_json::from_slice(&m.assignment)
                    .map_err(|e| format!("assignment {} unreadable: {e}", m.version))?;
                if failing.take().is_some() {
                    tracing::info!(%manager, "assignments from the manager again");
                }
                api.call(move |d| d.assign(a))
                    .await
                    .map_err(|e| e.message().to_owned())?;
            }
            Err("the manager ended the stream".into())
        }
        .await;
        if let Err(e) = r {
            if failing.as_ref() != Some(&e) {
                tracing::warn!(%manager, "assignments: {e}");
                failing = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
