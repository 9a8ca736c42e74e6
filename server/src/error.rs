//! The service layer's error: a protocol [`ErrorCode`] plus a message the user can read.
//!
//! The socket layer turns it into an ack `{error: {code, message}}` or a `request-error` event, the HTTP layer into a
//! status with the same JSON body. Details for operators go to the log where the error is made.

use app::protocol::{ErrorBody, ErrorCode, ErrorReply};
use axum::http::StatusCode;

use crate::docker::RuntimeError;

/// An error a client is told about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// The service layer already wrote this refusal to the audit log (the transport need not).
    pub audited: bool,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError { code, message: message.into(), audited: false }
    }

    /// Marks the refusal as written to the audit log.
    pub fn audited(mut self) -> Self {
        self.audited = true;
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorCode::InvalidPayload, message)
    }

    pub fn unknown_terminal(id: &impl std::fmt::Display) -> Self {
        ServiceError::new(ErrorCode::UnknownTerminal, format!("no terminal {id} is open for you"))
    }

    /// The HTTP status that fits the code.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::InvalidPayload => StatusCode::BAD_REQUEST,
            ErrorCode::ContainerNotFound
            | ErrorCode::UnknownTerminal
            | ErrorCode::NotFound
            | ErrorCode::UnknownProfile
            | ErrorCode::UnknownRecording => StatusCode::NOT_FOUND,
            ErrorCode::ContainerNotRunning
            | ErrorCode::AmbiguousContainer
            | ErrorCode::ImageNotFound
            | ErrorCode::RecordingInProgress => StatusCode::CONFLICT,
            ErrorCode::CommandNotFound | ErrorCode::CommandNotExecutable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooManyTerminals | ErrorCode::InputOverflow => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::DockerUnavailable | ErrorCode::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unauthenticated | ErrorCode::TokenExpired | ErrorCode::TokenRevoked => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::CommandNotAllowed | ErrorCode::ViewOnly | ErrorCode::OriginNotAllowed => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::QuotaExceeded | ErrorCode::RateLimited | ErrorCode::TooManyAuthFailures => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SignInTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody { code: self.code, message: self.message.clone() }
    }

    pub fn reply(&self) -> ErrorReply {
        ErrorReply { error: self.body() }
    }

    /// Maps a runtime failure that has no more specific meaning in its context.
    pub fn from_runtime(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unavailable(m) => {
                tracing::warn!(error = %m, "Docker daemon unavailable");
                ServiceError::new(ErrorCode::DockerUnavailable, "the Docker daemon is not answering; try again shortly")
            }
            RuntimeError::Ambiguous(m) => ServiceError::new(ErrorCode::AmbiguousContainer, m),
            other => {
                tracing::error!(error = %other, "Docker request failed");
                ServiceError::new(ErrorCode::Internal, other.to_string())
            }
        }
    }
}
