//! DNS for veilgate's own lookups (SPEC §10). Today the wire format of DNS
//! over HTTPS ([`wire`]); the resolver that sends it through veilgate's own
//! transport, its cache and the `/dns-query` relay build on it.

pub mod wire;
