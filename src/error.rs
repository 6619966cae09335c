//! The errors veilgate answers itself, and the one function that turns an
//! error into a response ([`Error::to_response`]).
//!
//! Every such response is JSON in the shape of Google's API errors, marked
//! with `x-proxy-error: true` so a client can tell it from an upstream's own
//! error (those pass through untouched). Messages name what failed — a
//! route rule, a host, a limit — never a header value, key, token or body.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::body::{Body, full};
use crate::route::RouteError;
use crate::tunnel::TunnelError;
use crate::upstream::UpstreamError;
use crate::upstream::choose::{Attempt, Failure};

/// An error that ends a request with a response made by veilgate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("Host header not allowed while listening on loopback; add it to allowed_hosts")]
    ForeignHost,
    #[error("request body larger than limits.max_body_bytes ({limit} bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("request head larger than limits.max_header_bytes ({limit} bytes)")]
    HeadTooLarge { limit: usize },
    #[error("the request body sent nothing for limits.header_read_timeout_ms ({ms} ms)")]
    BodyTimeout { ms: u64 },
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Every transport failed; the attempts go into `error.transports`.
    #[error("{}", .0.error)]
    Transports(Failure),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    #[error("too many connections (limits.max_connections)")]
    TooManyConnections,
    #[error("the request is not valid HTTP/1.1")]
    NotHttp,
    #[error("request target too long")]
    UriTooLong,
    /// A client's limit (§11); nothing reached an upstream.
    #[error("this client's limit {limit} is reached; it resets at {reset}")]
    LimitReached { limit: &'static str, reset: String, retry_after: u64 },
    /// A client with a cost limit asked for a model without a price.
    #[error("the model {model} has no price in [pricing], and this client has a cost limit")]
    Unpriced { model: String },
    #[error("{0}")]
    BadQuery(String),
    /// Every key of a keyed preset is cooling (§12); nothing was sent.
    #[error("every key of the preset {preset} is rate-limited; the first is usable again in {retry_after} s")]
    KeysCooling { preset: String, retry_after: u64 },
    /// The DoH relay could not get an answer (§10).
    #[error("DNS over HTTPS: {0}")]
    Dns(String),
    /// A relayed DNS message of another content type.
    #[error("dns-query takes content-type application/dns-message")]
    NotDnsMessage,
    /// `/<preset>/v1/models/<id>` of a model the preset does not declare.
    #[error("the preset {preset} declares no such model")]
    NoModel { preset: String },
    /// A preset's or alias's rate limit (§13); nothing was sent.
    #[error("the {what} is over its {limit}; try again in {retry_after} s")]
    RateLimited { what: String, limit: &'static str, retry_after: u64 },
    /// The unified endpoint's `model` names no alias and no `<preset>/<model>`.
    #[error("no alias or preset/model named \"{model}\"")]
    UnknownModel { model: String },
    /// The unified endpoint needs a JSON object with a string `model`.
    #[error("the request body must be a JSON object with a string \"model\"")]
    NoModelInBody,
    /// Every key of a keyed preset is disabled until a probe succeeds.
    #[error("every key of the preset {preset} was refused by the provider; they are probed again")]
    KeysDisabled { preset: String },
}

impl Error {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Error::Route(e) => e.status(),
            Error::ForeignHost => StatusCode::FORBIDDEN,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::BodyRead(_) => StatusCode::BAD_REQUEST,
            Error::Upstream(e) => e.status(),
            Error::Transports(f) => f.error.status(),
            Error::Tunnel(e) => e.status(),
            Error::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotHttp => StatusCode::BAD_REQUEST,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::LimitReached { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unpriced { .. } => StatusCode::FORBIDDEN,
            Error::BadQuery(_) => StatusCode::BAD_REQUEST,
            Error::KeysCooling { .. } | Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::UnknownModel { .. } => StatusCode::NOT_FOUND,
            Error::NoModelInBody => StatusCode::BAD_REQUEST,
            Error::KeysDisabled { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::NoModel { .. } => StatusCode::NOT_FOUND,
            Error::Dns(_) => StatusCode::BAD_GATEWAY,
            Error::NotDnsMessage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The transports tried, for `error.transports`.
    fn attempts(&self) -> &[Attempt] {
        match self {
            Error::Transports(f) => &f.attempts,
            _ => &[],
        }
    }

    /// The JSON error response (with the transports' failures when known).
    pub(crate) fn to_response(&self) -> Response<Body> {
        let mut resp = error_response(self.status(), &self.to_string(), self.attempts());
        if let Error::LimitReached { limit, retry_after, .. } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            resp.headers_mut().insert("x-veilgate-limit", HeaderValue::from_static(limit));
        }
        if let Error::KeysCooling { retry_after, .. } | Error::RateLimited { retry_after, .. } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        resp
    }

    /// The same as the bytes of a whole HTTP/1.1 response that closes the
    /// connection, for refusals made before any HTTP parsing.
    pub(crate) fn to_raw_response(&self) -> Vec<u8> {
        raw_error_response(self.status(), &self.to_string())
    }
}

/// Google-style status name for an HTTP status (veilgate's errors, and the
/// Gemini monitor's error event for an upstream's refusal).
pub(crate) fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "UNIMPLEMENTED",
        408 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        413 | 431 => "OUT_OF_RANGE",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        402..=498 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// The JSON text of a veilgate error.
pub(crate) fn error_body(status: StatusCode, message: &str, transports: &[Attempt]) -> String {
    let mut error = json!({
        "code": status.as_u16(),
        "message": message,
        "status": status_name(status),
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    });
    if !transports.is_empty() {
        let mut map = serde_json::Map::new();
        for t in transports {
            map.insert(
                t.transport.as_str().to_owned(),
                json!({ "error": t.error, "duration_ms": t.duration.as_millis() as u64 }),
            );
        }
        error["transports"] = serde_json::Value::Object(map);
    }
    json!({ "error": error }).to_string()
}

/// The bytes of a veilgate error as a whole HTTP/1.1 response that closes
/// the connection: for refusals made before (or instead of) hyper's
/// response machinery — over capacity, a head hyper could not parse.
fn raw_error_response(status: StatusCode, message: &str) -> Vec<u8> {
    let body = error_body(status, message, &[]);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nx-proxy-error: true\r\ncache-control: no-store\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// Builds a veilgate error response.
pub(crate) fn error_response(status: StatusCode, message: &str, transports: &[Attempt]) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(error_body(status, message, transports))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-proxy-error", HeaderValue::from_static("true"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[tokio::test]
    async fn json_shape() {
        let failures = [Attempt {
            transport: crate::upstream::choose::Transport::Socket,
            error: "connect refused".into(),
            duration: Duration::from_millis(12),
        }];
        let failure = Failure { error: UpstreamError::Closed { host: "h".into() }, attempts: failures.to_vec() };
        let resp = Error::Transports(failure).to_response();
        assert_eq!(resp.status(), 502);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["transports"]["socket"]["duration_ms"], 12);
        assert_eq!(v["error"]["transports"]["socket"]["error"], "connect refused");
        let resp = Error::Route(RouteError::UnknownScheme).to_response();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-proxy-error"], "true");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
        assert!(v["error"]["message"].as_str().unwrap().contains("scheme"));
        let ts = v["error"]["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert!(v["error"].get("transports").is_none());
    }

    #[test]
    fn status_names() {
        for (code, name) in [
            (401, "UNAUTHENTICATED"),
            (403, "PERMISSION_DENIED"),
            (502, "UNAVAILABLE"),
            (504, "DEADLINE_EXCEEDED"),
            (413, "OUT_OF_RANGE"),
        ] {
            assert_eq!(status_name(StatusCode::from_u16(code).unwrap()), name);
        }
    }
}
