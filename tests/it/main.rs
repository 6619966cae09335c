//! veilgate's integration tests: one binary, real loopback servers.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod aliases;
mod cli;
mod clients;
mod dns;
mod egress;
mod failover;
mod fallback;
mod gemini;
mod hardening;
mod hostile;
mod keys;
mod operate;
mod policy;
mod reload;
mod routing;
mod sdk;
mod streams;
#[allow(dead_code)] // helpers shared by tests that not every build uses
mod support;
mod transport;
mod tunnel;
mod usage;
