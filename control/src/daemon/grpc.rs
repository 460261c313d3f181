//! The gRPC adapter: each call of the local API runs on a blocking thread under the
//! daemon's lock, all or nothing.

use super::*;

/// The gRPC service: each call runs on a blocking thread under the daemon's lock.
#[derive(Clone)]
pub struct Api {
    pub(super) inner: Arc<Mutex<Daemon>>,
    pub(super) runtime: Arc<tokio::sync::Mutex<crate::runtime::ClusterRuntime>>,
    /// Held through `swarm init`, `join` and `leave`, so that a join — which talks to a
    /// manager between checking and recording — cannot interleave with another.
    pub(super) membership: Arc<tokio::sync::Mutex<()>>,
}

/// The daemon's state, even after a panic poisoned its lock: every path that changes it
/// either completes or (through `Api::call`) restores it, so it is consistent to go on.
pub(super) fn lock_state(m: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    m.lock().unwrap_or_else(|e| {
        m.clear_poison();
        e.into_inner()
    })
}

impl Api {
    /// Runs `f` on the daemon's state on a blocking thread, all or nothing.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Daemon) -> Result<T, Status> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let d = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = lock_state(&d);
            // Every verb is all or nothing: a refusal before the new state is saved leaves
            // memory exactly as it was (and so as on disk and in the data plane), however
            // far the handler got. Handlers validate first anyway; this makes it structural.
            let before = (g.cluster.clone(), g.local.clone());
            let saves = g.saves;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut g)))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("panic");
                    tracing::error!("a request failed with an internal error: {what}");
                    Err(Status::internal(format!("internal error: {what}")))
                });
            if r.is_err() && g.saves == saves {
                (g.cluster, g.local) = before;
            }
            r
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl api::swarmgate_server::Swarmgate for Api {
    async fn swarm_init(
        &self,
        r: Request<api::SwarmInitRequest>,
    ) -> Result<Response<api::SwarmInitReply>, Status> {
        let _one = self.membership.lock().await;
        let reply = self.call(move |d| d.swarm_init(r.into_inner())).await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn swarm_join(
        &self,
        r: Request<api::SwarmJoinRequest>,
    ) -> Result<Response<api::SwarmJoinReply>, Status> {
        let r = r.into_inner();
        let manager = crate::agent::manager_addr(&r.remote_addr).map_err(bad)?;
        let _one = self.membership.lock().await;
        let plan = r.clone();
        let me = self.call(move |d| d.join_plan(&plan)).await?.into_inner();
        let joined = crate::agent::join(manager, &r.token, &me)
            .await
            .map_err(Status::failed_precondition)?;
        let reply = self
            .call(move |d| d.finish_join(joined, me, &r.listen_addr))
            .await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn swarm_join_token(
        &self,
        r: Request<api::JoinTokenRequest>,
    ) -> Result<Response<api::JoinTokenReply>, Status> {
        self.call(move |d| d.join_token(r.into_inner())).await
    }
    async fn swarm_leave(
        &self,
        r: Request<api::SwarmLeaveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        let _one = self.membership.lock().await;
        let reply = self.call(move |d| d.swarm_leave(r.into_inner())).await?;
        self.runtime.lock().await.ensure(self).await;
        Ok(reply)
    }
    async fn node_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::NodeListReply>, Status> {
        self.call(|d| d.node_list()).await
    }
    async fn node_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        self.call(move |d| d.node_inspect(r.into_inner())).await
    }
    async fn node_update(
        &self,
        r: Request<api::NodeUpdateRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.node_update(r.into_inner())).await
    }
    async fn node_remove(
        &self,
        r: Request<api::NodeRemoveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.node_remove(r.into_inner())).await
    }
    async fn swarm_update(
        &self,
        r: Request<api::SwarmUpdateRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.swarm_update(r.into_inner())).await
    }
    async fn network_create(
        &self,
        r: Request<api::NetworkCreateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        self.call(move |d| d.network_create(r.into_inner())).await
    }
    async fn network_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::NetworkListReply>, Status> {
        self.call(|d| d.network_list()).await
    }
    async fn network_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        self.call(move |d| d.network_inspect(r.into_inner())).await
    }
    async fn network_remove(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.network_remove(r.into_inner())).await
    }
    async fn service_create(
        &self,
        r: Request<api::ServiceCreateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        self.call(move |d| d.service_create(r.into_inner())).await
    }
    async fn service_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::ServiceListReply>, Status> {
        self.call(|d| d.service_list()).await
    }
    async fn service_ps(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::TaskListReply>, Status> {
        self.call(move |d| d.service_ps(r.into_inner())).await
    }
    async fn service_inspect(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::JsonReply>, Status> {
        self.call(move |d| d.service_inspect(r.into_inner())).await
    }
    async fn service_update(
        &self,
        r: Request<api::ServiceUpdateRequest>,
    ) -> Result<Response<api::IdReply>, Status> {
        self.call(move |d| d.service_update(r.into_inner())).await
    }
    async fn service_remove(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.service_remove(r.into_inner())).await
    }
    type ServiceLogsStream = tokio_stream::wrappers::ReceiverStream<Result<api::LogsReply, Status>>;

    async fn service_logs(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let sources = self
            .call(move |d| d.service_log_sources(r.into_inner()))
            .await?
            .into_inner();
        // Streamed in batches of lines, a line at a time from disk: memory stays bounded
        // whatever the logs hold, and the state lock is not held while reading.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let mut open = true;
            for (prefix, path) in sources {
                crate::logs::for_each_line(&path, crate::logs::MAX_FILES, |l| {
                    batch.push(format!("{prefix}    | {l}"));
                    if batch.len() == 512 {
                        let lines = std::mem::take(&mut batch);
                        open = tx.blocking_send(Ok(api::LogsReply { lines })).is_ok();
                    }
                    open
                });
                if !open {
                    return; // the client went away
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(api::LogsReply { lines: batch }));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn container_run(
        &self,
        r: Request<api::ContainerRunRequest>,
    ) -> Result<Response<api::EndpointReply>, Status> {
        self.call(move |d| d.container_run(r.into_inner())).await
    }
    async fn container_exited(
        &self,
        r: Request<api::ContainerExitedRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.container_exited(r.into_inner())).await
    }
    async fn container_remove(
        &self,
        r: Request<api::ContainerRemoveRequest>,
    ) -> Result<Response<api::Empty>, Status> {
        self.call(move |d| d.container_remove(r.into_inner())).await
    }
    async fn container_list(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::ContainerListReply>, Status> {
        self.call(|d| d.container_list()).await
    }
    async fn endpoint_lookup(
        &self,
        r: Request<api::NamesRequest>,
    ) -> Result<Response<api::EndpointReply>, Status> {
        self.call(move |d| d.endpoint_lookup(r.into_inner())).await
    }
    async fn stats(&self, _: Request<api::Empty>) -> Result<Response<api::JsonReply>, Status> {
        self.call(|d| {
            Ok(api::JsonReply {
                json: serde_json::to_string_pretty(&d.dp.stats()).expect("json"),
            })
        })
        .await
    }
}
