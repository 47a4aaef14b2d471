//! How the server answers: JSON bodies, and failures as `Status` objects.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::Collection;

/// Every response body: a whole JSON document, or a watch stream.
pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A failed request, answered with a `Status` object as the real server
/// does; kube-rs turns that into `kube::Error::Api` with code and reason.
#[derive(Debug)]
pub(super) struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    pub(super) fn not_found(c: &Collection, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", c.plural),
        )
    }

    pub(super) fn conflict(c: &Collection, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            c.plural
        );
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub(super) fn expired(message: String) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub(super) fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        })
    }

    pub(super) fn response(&self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

pub(super) fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *res.status_mut() = code;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

pub(super) fn unsupported(ctype: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format: {ctype}"),
    )
}
