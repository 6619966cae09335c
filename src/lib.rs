//! veilgate: a privacy proxy for LLM APIs and any HTTP(S) API.
//!
//! A request flows through these modules, in this order:
//!
//! 1. [`server`] accepts the downstream connection (hyper, HTTP/1.1 and 2).
//! 2. [`proxy`] checks `Host`, answers `OPTIONS` and local endpoints.
//! 3. [`route`] turns the path into a preset or generic destination (pure).
//! 4. [`policy`] decides what may leave: the header allowlist and which
//!    addresses a target may have (pure).
//! 5. [`upstream`] sends it: veilgate's own HTTP/1.1 client over its own
//!    TCP/TLS connection, and streams the response back.
//!    WebSocket upgrades go to [`tunnel`] instead.
//! 6. [`error`] turns anything that failed into one JSON error response.
//!
//! [`config`] is read once at start-up and shared read-only by all of them.

pub mod auth;
pub(crate) mod body;
pub mod config;
pub(crate) mod dashboard;
pub(crate) mod error;
pub mod fds;
pub(crate) mod metrics;
pub mod monitor;
pub mod policy;
pub(crate) mod proxy;
pub mod route;
pub mod server;
pub(crate) mod tunnel;
pub mod upstream;
