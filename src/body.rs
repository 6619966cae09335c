//! The response body type every handler returns, and small constructors.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Errors carried by response bodies (an upstream cut short, an idle timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: in memory, or streamed from an upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
