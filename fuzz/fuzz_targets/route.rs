//! Routing and the target grammar on arbitrary paths: never panics, and a
//! generic route never yields a host the grammar would refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veilgate::auth::Token;
use veilgate::config::{Config, RawConfig};
use veilgate::policy::target::parse_authority;
use veilgate::route::{Route, RouteContext, RouteHeaders, RouteInput, route};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_authority(text);
    let Ok(config) = Config::from_raw(RawConfig::default(), &|_| None) else { return };
    let Ok(token) = Token::parse("fuzz_token_0123456789", "fuzz") else { return };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let input =
        RouteInput { method: &http::Method::POST, path, query, header_token: None, headers: RouteHeaders(None) };
    let cx = RouteContext {
        presets: &config.presets,
        token: &token,
        preset_auth: false,
        clients: &config.clients,
        dns_relay: false,
    };
    if let Ok(Route::Generic { origin, .. }) = route(input, cx) {
        let shown = origin.host_header();
        assert!(parse_authority(&shown).is_ok(), "{shown}");
    }
});
