//! veilgate: a privacy proxy for LLM APIs and any HTTP(S) API.
//!
//! A request flows through these modules, in this order:
//!
//! 1. [`server`] accepts the downstream connection (hyper, HTTP/1.1 and 2)
//!    and holds it to the limits: head timeout from accept, streams, JSON
//!    refusals.
//! 2. `proxy` runs the request's phases: admit (head size, `Host`) →
//!    [`auth`] finds the caller → [`route`] turns the path into a preset or
//!    generic destination (pure) → `proxy::plan` decides what to do (pure)
//!    → send → shape the response → record (`metrics`).
//! 3. [`policy`] decides what may leave: the header allowlist, which
//!    addresses a target may have, where redirects point (pure).
//! 4. [`upstream`] sends it: veilgate's own HTTP/1.1 client over its own
//!    TCP/TLS connection (reqwest as the fallback), through one connector
//!    and one target check, and streams the response back.
//!    WebSocket upgrades go to `tunnel` instead; Gemini streams pass the
//!    [`monitor`].
//! 5. `error` turns anything that failed into one JSON error response.
//!
//! [`client`] and [`jwt`] know the callers' tokens; [`usage`] meters a
//! client's requests: the reservation against its limits before a request
//! leaves, the usage read from the answer as it passes, the ledger of month
//! figures and the SQLite store written off the request path.
//!
//! [`config`] is validated once into a snapshot that every request loads
//! once; state that outlives a request (transports, pools, metrics) lives
//! beside it in the `proxy::App`.

pub mod auth;
pub mod balance;
pub(crate) mod body;
pub mod client;
pub mod config;
pub(crate) mod dashboard;
pub(crate) mod decimal;
pub mod dns;
pub mod egress;
pub(crate) mod error;
pub mod fds;
pub mod jwt;
pub mod keys;
pub(crate) mod metrics;
pub mod monitor;
pub mod policy;
pub mod preset;
pub(crate) mod proxy;
pub mod route;
pub mod server;
pub(crate) mod tunnel;
pub mod upstream;
pub mod usage;
