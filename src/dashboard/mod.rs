//! The dashboard at `GET /`: one self-contained page (no external fonts,
//! scripts or CDNs), rendered from memory with the presets and their
//! transport state, served with an ETag. The server never puts the token
//! in it; the page's URL builder runs entirely in the browser.

use std::hash::{Hash, Hasher};

use serde_json::json;

use std::sync::Arc;

use crate::egress::Exit;
use crate::keys::{KeyState, Keyring};
use crate::policy::target::Origin;
use crate::preset::Presets;
use crate::usage::time::{rfc3339, unix_ms};

const PAGE: &str = include_str!("index.html");

/// The rendered page and its ETag.
pub(crate) struct Page {
    pub html: String,
    pub etag: String,
}

/// Renders the page for the current presets; `challenged` are the origins
/// currently sent straight to fetch after a Cloudflare challenge.
pub(crate) fn render(presets: &Presets, force_fetch_default: bool, challenged: &[Origin], exits: &[Arc<Exit>]) -> Page {
    let list: Vec<_> = presets
        .iter()
        .filter(|p| p.enabled)
        .map(|p| {
            let transport = if p.force_fetch || force_fetch_default {
                "forced fetch"
            } else if p.targets.iter().any(|t| challenged.contains(&t.origin)) {
                "fetch after challenge"
            } else {
                "socket-first"
            };
            json!({
                "route": p.route,
                "name": p.display_name,
                "targets": p.targets.iter().map(|t| t.url()).collect::<Vec<_>>(),
                "transport": transport,
                "keys": p.keys.as_deref().map(keys_of).unwrap_or_default(),
            })
        })
        .collect();
    let now = unix_ms(std::time::SystemTime::now());
    let exits: Vec<_> = exits
        .iter()
        .map(|e| json!({ "name": e.name, "kind": e.kind.name(), "address": e.kind.address(), "status": e.status(now) }))
        .collect();
    // `<` escaped so no value can close the script element.
    let script = |v: Vec<serde_json::Value>| serde_json::Value::Array(v).to_string().replace('<', "\\u003c");
    let html = PAGE
        .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
        .replace("{{PRESETS}}", &script(list))
        .replace("{{EXITS}}", &script(exits));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    html.hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    Page { html, etag }
}

/// A keyed preset's keys as the page shows them: masked, with their state
/// and the end of cooling (RFC 3339).
fn keys_of(ring: &Keyring) -> Vec<serde_json::Value> {
    let states = ring.snapshot(std::time::Instant::now());
    ring.keys()
        .iter()
        .zip(states)
        .map(|(key, state)| {
            let until = match state {
                KeyState::Cooling { until_wall, .. } => Some(rfc3339(unix_ms(until_wall))),
                _ => None,
            };
            json!({ "key": key.masked(), "state": state.name(), "until": until })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RawConfig};

    #[test]
    fn page_is_self_contained_and_lists_presets() {
        let c = Config::from_raw(
            RawConfig::from_toml("[presets.x]\ntargets = [\"https://x.example/</script>\"]\nforce_fetch = true")
                .unwrap(),
            &|_| None,
        )
        .unwrap();
        let page = render(&c.presets, false, &[], &[]);
        assert!(page.html.contains("\"route\":\"openai\""));
        assert!(page.html.contains("forced fetch"));
        assert!(!page.html.contains("x.example/</script>"), "values cannot close the script");
        for external in ["src=\"http", "href=\"http", "@import", "url(http", "//fonts."] {
            assert!(!page.html.contains(external), "external resource: {external}");
        }
        // The usage view asks this origin only, with a token kept in memory.
        assert!(page.html.contains("fetch(`/usage?month="), "usage comes from /usage on the same origin");
        assert!(page.html.contains("id=\"u-token\" type=\"password\""));
        for storage in ["localStorage", "sessionStorage", "document.cookie", "indexedDB"] {
            assert!(!page.html.contains(storage), "the token is never stored ({storage})");
        }
        assert!(page.html.contains("createElementNS(SVG"), "the per-day chart is inline SVG");
        let again = render(&c.presets, false, &[], &[]);
        assert_eq!(page.etag, again.etag);
        let challenged =
            render(&c.presets, false, &[c.presets.enabled("openai").unwrap().targets[0].origin.clone()], &[]);
        assert!(challenged.html.contains("fetch after challenge"));
        assert_ne!(page.etag, challenged.etag);
    }
}
