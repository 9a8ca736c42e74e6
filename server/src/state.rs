//! The service layer shared by the socket and HTTP transports: one cloneable handle, methods named for intent.

use std::sync::Arc;

use app::protocol::{ContainerSummary, ErrorCode, ExitReason, Health, PROTOCOL_VERSION, TerminalId, TerminalInfo};

use crate::docker::ContainerRuntime;
use crate::error::ServiceError;
use crate::session::{Limits, Sessions};

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    sessions: Arc<Sessions>,
}

impl AppState {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, limits: Limits) -> AppState {
        AppState { sessions: Sessions::new(runtime, limits) }
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Whether the daemon answers.
    pub async fn health(&self) -> Result<Health, ServiceError> {
        match self.sessions.runtime().ping().await {
            Ok(api) => Ok(Health { status: "ok".into(), protocol_version: PROTOCOL_VERSION, docker_api_version: api }),
            Err(e) => Err(ServiceError::new(ErrorCode::DockerUnavailable, e.to_string())),
        }
    }

    /// Every container, running ones first, then by name.
    pub async fn containers(&self) -> Result<Vec<ContainerSummary>, ServiceError> {
        let mut list = self.sessions.runtime().list_containers().await.map_err(ServiceError::from_runtime)?;
        list.sort_by(|a, b| (a.state != "running").cmp(&(b.state != "running")).then_with(|| a.name.cmp(&b.name)));
        Ok(list)
    }

    pub fn terminals(&self) -> Vec<TerminalInfo> {
        self.sessions.list()
    }

    pub fn terminal(&self, id: &TerminalId) -> Result<TerminalInfo, ServiceError> {
        self.sessions.find(id).map(|t| self.sessions.info(&t))
    }

    /// Closes any terminal (REST has no owner yet; access control comes with authentication).
    pub async fn close_terminal(&self, id: &TerminalId) -> Result<(), ServiceError> {
        let t = self.sessions.find(id)?;
        if t.has_ended() {
            // Already over: just take it off the list.
            self.sessions.forget(id);
            return Ok(());
        }
        self.sessions.close(&t, ExitReason::Closed).await
    }
}

#[async_trait::async_trait]
impl app::api::backend::Backend for AppState {
    async fn containers(&self) -> Result<Vec<ContainerSummary>, app::protocol::ErrorBody> {
        AppState::containers(self).await.map_err(|e| e.body())
    }

    fn terminals(&self) -> Vec<TerminalInfo> {
        AppState::terminals(self)
    }
}
