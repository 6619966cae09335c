//! Hostile input, round 2: each test here failed before its fix.

use crate::support::client::send;
use crate::support::origin::RawOrigin;
use crate::support::{TOKEN, Veilgate, preset_at};

#[tokio::test]
async fn a_connection_pooled_for_a_preset_never_serves_a_checked_generic_request() {
    let origin = RawOrigin::json("{\"ok\":true}").await;
    let vg = Veilgate::start(&preset_at("openai", origin.addr)).await;
    let trusted = send(vg.addr, "GET", "/openai/v1/models", &[("connection", "keep-alive")], b"").await;
    assert_eq!(trusted.status, 200);
    // The preset's connection to the loopback origin is pooled now; the
    // generic route must still refuse that private address.
    let generic = send(vg.addr, "GET", &format!("/{TOKEN}/http/{}/v1/models", origin.addr), &[], b"").await;
    generic.assert_proxy_error(403);
    assert_eq!(origin.requests().len(), 1, "the generic request reached the private origin");
}
