//! The plan of a request, decided purely from its [`Route`] and the
//! configuration: answer a local endpoint, or forward — to which target and
//! path, with which user-agent, target check, transport preference,
//! redirect rewriting and monitor. No IO; [`super::App`] carries it out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Caller, Token};
use crate::balance::RateLimits;
use crate::client::Client;
use crate::config::Config;
use crate::egress::{ExitKind, ExitSet, Isolate};
use crate::keys::{Keyring, strip_key_param};
use crate::metrics::RouteKind;
use crate::policy::headers::UserAgent;
use crate::policy::target::Origin;
use crate::preset::{Monitor, Preset};
use crate::route::{Route, upstream_path};
use crate::upstream::Preference;
use crate::upstream::connect::{Egress, TargetCheck};
use crate::usage::count::Protocol;

use super::shape::Redirect;

/// What veilgate does with a request.
#[derive(Debug)]
// A plan lives on the stack for one request and is moved once: boxing the
// forward would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Plan {
    Dashboard,
    Health,
    Metrics,
    Usage,
    UsageRequests,
    Topology,
    /// `/<token>/dns-query` (§10).
    DnsRelay,
    /// A preset's declared models (§12).
    Models(Arc<Preset>, Option<String>),
    /// The keyed presets a caller may use (§12).
    Providers(Caller),
    /// The unified endpoint (§13): the member is chosen once the body's
    /// `model` is read.
    Unified(Unified),
    /// `GET /v1/models` of the unified endpoint.
    UnifiedModels(Caller),
    Forward(Forward),
}

/// A request of the unified endpoint.
#[derive(Debug)]
pub(super) struct Unified {
    /// The path after `/v1` (`/chat/completions`).
    pub(super) endpoint: String,
    pub(super) query: Option<String>,
    pub(super) caller: Caller,
    pub(super) key_slot_token: bool,
}

/// A request (or tunnel) for an upstream.
#[derive(Debug)]
pub(super) struct Forward {
    /// `Test`, `Preset` or `Generic` (a tunnel is decided by the client's
    /// `Upgrade` header when the request is sent).
    pub(super) kind: RouteKind,
    /// The preset's route name, for the access record.
    pub(super) preset: Option<String>,
    /// The caller's name for the access record (`admin`, a client's).
    pub(super) client: Option<Arc<str>>,
    /// The client whose usage this is (metered), if the caller is one.
    pub(super) account: Option<Arc<Client>>,
    /// How the preset's API reports usage.
    pub(super) protocol: Option<Protocol>,
    pub(super) origin: Origin,
    /// Path and query for the upstream, byte for byte.
    pub(super) path: String,
    /// The preset's own user-agent rule, over `[headers].user_agent`.
    pub(super) user_agent: Option<UserAgent>,
    pub(super) check: TargetCheck,
    /// Fetch only (the preset's `force_fetch`, `force_fetch_default`), or
    /// socket first.
    pub(super) transport: Preference,
    /// False for `/test`: nothing of the client's request is forwarded (a
    /// bare GET, no headers, no body, never a tunnel).
    pub(super) from_client: bool,
    /// How redirects are pointed back through veilgate (none for `/test`).
    pub(super) redirect: Option<Redirect>,
    /// The Gemini stream monitor watches this request's stream.
    pub(super) monitor: bool,
    /// The preset's held keys: the client's own key slots are emptied and
    /// one of these written instead (§12).
    pub(super) keys: Option<Arc<Keyring>>,
    /// How its connection leaves (§10).
    pub(super) egress: Egress,
    /// A preset request that may go again, or to another target (§13).
    pub(super) again: Option<Again>,
    /// The preset's rate limits, when it has any (§13).
    pub(super) limits: Option<Arc<RateLimits>>,
    /// Streams of this preset are continued when cut (§14).
    pub(super) continues: Option<Continues>,
}

/// How a preset's cut streams are continued (§14).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Continues {
    pub(crate) prefill: bool,
    /// The preset's own `stream_idle_timeout_ms`.
    pub(crate) idle_timeout: Option<std::time::Duration>,
}

/// What sending a preset request again needs: the targets in the order
/// this request tries them (`order[0]` is the one planned) and what aims
/// the request at another.
#[derive(Debug)]
pub(super) struct Again {
    pub(super) preset: Arc<Preset>,
    pub(super) order: Vec<usize>,
    remainder: String,
    query: Option<String>,
    caller: Option<Arc<str>>,
    exit: Option<u64>,
}

/// One target of a preset, aimed at.
pub(super) struct Aimed {
    pub(super) origin: Origin,
    pub(super) path: String,
    pub(super) egress: Egress,
    pub(super) base_path: String,
}

impl Again {
    /// The request aimed at target `index` of the preset.
    pub(super) fn aim(&self, index: usize, config: &Config) -> Option<Aimed> {
        let target = self.preset.targets.get(index)?;
        let exits = self.preset.exits.as_deref().unwrap_or(&config.upstream.exits);
        Some(Aimed {
            origin: target.origin.clone(),
            path: upstream_path(&target.base_path, &self.remainder, self.query.as_deref()),
            egress: egress_of(exits, &target.origin, self.exit, self.caller.clone()),
            base_path: target.base_path.clone(),
        })
    }
}

/// What planning reads besides the route.
#[derive(Clone, Copy)]
pub(super) struct Settings<'a> {
    pub(super) config: &'a Config,
    pub(super) token: &'a Token,
    /// The address veilgate listens on (refused as a checked target).
    pub(super) own: SocketAddr,
    /// The exit the client asked for (`x-veilgate-exit`).
    pub(super) exit: Option<u64>,
}

/// The exit of a connection to `origin` (direct when the set has none),
/// with the isolation identity its exit asks for: the caller's name
/// (`isolate = "client"`; never its token) or a fresh one per request.
pub(super) fn egress_of(set: &ExitSet, origin: &Origin, asked: Option<u64>, caller: Option<Arc<str>>) -> Egress {
    let exit = if set.exits.len() > 1 { set.pick(&origin.host.to_string(), asked) } else { set.pick("", None) };
    let Some(exit) = exit else { return Egress::Direct };
    let identity = match &exit.kind {
        ExitKind::Socks5 { isolate: Isolate::Client, .. } => {
            Some(caller.map_or_else(|| Arc::from("veilgate-anonymous"), |n| Arc::from(format!("veilgate-{n}"))))
        }
        ExitKind::Socks5 { isolate: Isolate::Request, .. } => {
            Some(Arc::from(format!("veilgate-{:016x}", rand::random::<u64>())))
        }
        _ => None,
    };
    Egress::Via { exit: Arc::clone(exit), identity }
}

/// The target check of preset routes (private addresses allowed: an
/// operator chose them; veilgate's own address refused).
pub(super) fn preset_check(own: SocketAddr) -> TargetCheck {
    TargetCheck { allow_private: true, own }
}

/// Plans one routed request. `request_path` is the path as the client sent
/// it (a preset's redirects map back onto its prefix).
pub(super) fn plan(route: Route, request_path: &str, s: Settings<'_>) -> Plan {
    let check = |allow_private: bool| TargetCheck { allow_private, own: s.own };
    let socket_first = if s.config.force_fetch_default { Preference::FetchOnly } else { Preference::SocketFirst };
    let forward = match route {
        Route::Dashboard => return Plan::Dashboard,
        Route::Health => return Plan::Health,
        Route::Metrics => return Plan::Metrics,
        Route::Usage => return Plan::Usage,
        Route::UsageRequests => return Plan::UsageRequests,
        Route::Topology => return Plan::Topology,
        Route::DnsRelay => return Plan::DnsRelay,
        Route::Models { preset, id } => return Plan::Models(preset, id),
        Route::Providers { caller } => return Plan::Providers(caller),
        Route::Unified { endpoint, query, caller, key_slot_token } => {
            return Plan::Unified(Unified { endpoint, query, caller, key_slot_token });
        }
        Route::UnifiedModels { caller } => return Plan::UnifiedModels(caller),
        Route::Test => {
            let (origin, path) = s.config.default_dst.clone();
            let egress = egress_of(&s.config.upstream.exits, &origin, s.exit, None);
            Forward {
                egress,
                kind: RouteKind::Test,
                preset: None,
                client: None,
                account: None,
                protocol: None,
                origin,
                path,
                user_agent: None,
                check: check(true),
                transport: socket_first,
                from_client: false,
                redirect: None,
                monitor: false,
                keys: None,
                again: None,
                limits: None,
                continues: None,
            }
        }
        Route::Preset { preset, remainder, query, caller } => {
            // A held key replaces the client's, `key=` included.
            let query = match &preset.keys {
                Some(_) => query.as_deref().and_then(strip_key_param),
                None => query,
            };
            // A preset with several targets, or that retries, keeps what it
            // needs to go again; one that is sent once keeps nothing.
            let again = (!preset.failover.is_single_shot(preset.targets.len())).then(|| {
                let f = &preset.failover;
                let order = match &preset.balance {
                    Some(b) => b.order(f.strategy, &f.weights, Instant::now(), rand::random::<f64>),
                    None => vec![0],
                };
                Again {
                    preset: Arc::clone(&preset),
                    order,
                    remainder: remainder.clone(),
                    query: query.clone(),
                    caller: caller.name(),
                    exit: s.exit,
                }
            });
            let first = again.as_ref().and_then(|a| a.order.first().copied()).unwrap_or(0);
            let target = &preset.targets[first.min(preset.targets.len() - 1)];
            let exits = preset.exits.as_deref().unwrap_or(&s.config.upstream.exits);
            let egress = egress_of(exits, &target.origin, s.exit, caller.name());
            let prefix = request_path[..request_path.len().saturating_sub(remainder.len())].to_owned();
            Forward {
                kind: RouteKind::Preset,
                preset: Some(preset.route.clone()),
                client: caller.name(),
                account: caller.client(),
                protocol: preset.protocol,
                origin: target.origin.clone(),
                path: upstream_path(&target.base_path, &remainder, query.as_deref()),
                user_agent: preset.user_agent.clone(),
                check: check(true),
                transport: if preset.force_fetch { Preference::FetchOnly } else { socket_first },
                from_client: true,
                redirect: Some(Redirect::Preset { base_path: target.base_path.clone(), prefix }),
                monitor: preset.monitor == Monitor::Gemini && s.config.gemini.enabled,
                keys: preset.keys.clone(),
                egress,
                again,
                limits: (!preset.limits.is_empty()).then(|| Arc::clone(&preset.limits)),
                continues: (preset.continue_streams
                    && matches!(preset.protocol, Some(Protocol::OpenAi | Protocol::Anthropic)))
                .then_some(Continues { prefill: preset.prefill, idle_timeout: preset.stream_idle_timeout }),
            }
        }
        Route::Generic { origin, remainder, query, path_token, caller, exit } => {
            let auth_prefix = if path_token { format!("/{}", s.token.expose()) } else { String::new() };
            let egress = egress_of(&s.config.upstream.exits, &origin, exit.or(s.exit), caller.name());
            Forward {
                egress,
                kind: RouteKind::Generic,
                preset: None,
                client: caller.name(),
                account: caller.client(),
                protocol: None,
                origin,
                path: upstream_path("", &remainder, query.as_deref()),
                user_agent: None,
                check: check(s.config.upstream.allow_private_targets),
                transport: socket_first,
                from_client: true,
                redirect: Some(Redirect::Generic { auth_prefix }),
                monitor: false,
                keys: None,
                again: None,
                limits: None,
                continues: None,
            }
        }
    };
    Plan::Forward(forward)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::route::{RouteContext, RouteInput, route};

    const TOKEN: &str = "plan_token_0123456789";

    /// Routes and plans `target` (path and query) under `toml`.
    fn planned(toml: &str, target: &str, header_token: Option<&str>) -> Plan {
        let config = Config::from_raw(RawConfig::from_toml(toml).unwrap(), &|_| None).unwrap();
        let token = Token::parse(TOKEN, "test").unwrap();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let input = RouteInput {
            method: &http::Method::GET,
            path,
            query,
            header_token: header_token.map(str::as_bytes),
            headers: crate::route::RouteHeaders(None),
        };
        let cx = RouteContext {
            presets: &config.presets,
            token: &token,
            preset_auth: config.preset_auth,
            clients: &config.clients,
            dns_relay: false,
        };
        let routed = route(input, cx).unwrap();
        let own = "127.0.0.1:8080".parse().unwrap();
        plan(routed, path, Settings { config: &config, token: &token, own, exit: None })
    }

    fn forward(toml: &str, target: &str, header_token: Option<&str>) -> Forward {
        match planned(toml, target, header_token) {
            Plan::Forward(f) => f,
            other => panic!("{target}: {other:?}"),
        }
    }

    #[test]
    fn local_endpoints() {
        assert!(matches!(planned("", "/", None), Plan::Dashboard));
        assert!(matches!(planned("", "/healthz", None), Plan::Health));
        assert!(matches!(planned("", "/metrics", None), Plan::Metrics));
    }

    /// Kind, preset, destination, strict check, force fetch, from the
    /// client, monitored.
    type Expected<'a> = (RouteKind, Option<&'a str>, &'a str, bool, bool, bool, bool);

    #[test]
    fn forwards() {
        let generic = format!("/{TOKEN}/https/api.example.com:8443/v1/x?a=1");
        let ollama = "[presets.ollama]\ntargets = [\"http://127.0.0.1:11434/base/\"]\nforce_fetch = true\nuser_agent = \"strip\"";
        // (config, target, header token) → (kind, preset, destination, strict check, force fetch, from client, monitor)
        let cases: Vec<(&str, &str, Option<&str>, Expected<'_>)> = vec![
            (
                "",
                "/openai/v1/chat?x=1",
                None,
                (RouteKind::Preset, Some("openai"), "https://api.openai.com/v1/chat?x=1", false, false, true, false),
            ),
            (
                "",
                "/gemini/v1beta/models/m:streamGenerateContent?alt=sse",
                None,
                (
                    RouteKind::Preset,
                    Some("gemini"),
                    "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse",
                    false,
                    false,
                    true,
                    true,
                ),
            ),
            (
                "[gemini]\nenabled = false",
                "/gemini/v1beta/x",
                None,
                (
                    RouteKind::Preset,
                    Some("gemini"),
                    "https://generativelanguage.googleapis.com/v1beta/x",
                    false,
                    false,
                    true,
                    false,
                ),
            ),
            (
                ollama,
                "/ollama/api/chat",
                None,
                (RouteKind::Preset, Some("ollama"), "http://127.0.0.1:11434/base/api/chat", false, true, true, false),
            ),
            (
                "",
                &generic,
                None,
                (RouteKind::Generic, None, "https://api.example.com:8443/v1/x?a=1", true, false, true, false),
            ),
            (
                "",
                "/https/api.example.com/v1",
                Some(TOKEN),
                (RouteKind::Generic, None, "https://api.example.com/v1", true, false, true, false),
            ),
            (
                "[upstream]\nallow_private_targets = true",
                "/http/10.0.0.1/v1",
                Some(TOKEN),
                (RouteKind::Generic, None, "http://10.0.0.1/v1", false, false, true, false),
            ),
            (
                "default_dst_url = \"https://example.org/get?q=1\"",
                "/test",
                None,
                (RouteKind::Test, None, "https://example.org/get?q=1", false, false, false, false),
            ),
            (
                "force_fetch_default = true",
                "/openai/v1",
                None,
                (RouteKind::Preset, Some("openai"), "https://api.openai.com/v1", false, true, true, false),
            ),
            (
                "force_fetch_default = true",
                "/https/h.example/x",
                Some(TOKEN),
                (RouteKind::Generic, None, "https://h.example/x", true, true, true, false),
            ),
        ];
        for (toml, target, header, want) in cases {
            let f = forward(toml, target, header);
            let got = (
                f.kind,
                f.preset.as_deref(),
                format!("{}{}", f.origin, f.path),
                f.check.is_strict(),
                f.transport == Preference::FetchOnly,
                f.from_client,
                f.monitor,
            );
            assert_eq!((got.0, got.1, got.2.as_str(), got.3, got.4, got.5, got.6), want, "{target}");
        }
    }

    #[test]
    fn redirects_and_user_agents() {
        let f = forward("[presets.openai]\nuser_agent = \"pass\"", "//openai//v1/files", None);
        assert_eq!(f.redirect, Some(Redirect::Preset { base_path: String::new(), prefix: "//openai".into() }));
        assert_eq!(f.user_agent, Some(UserAgent::Pass));
        let f = forward("", "/groq/v1/models", None);
        assert_eq!(f.redirect, Some(Redirect::Preset { base_path: "/openai".into(), prefix: "/groq".into() }));
        assert_eq!(f.user_agent, None, "[headers].user_agent applies");
        let in_path = forward("", &format!("/{TOKEN}/https/h.example/x"), None);
        assert_eq!(in_path.redirect, Some(Redirect::Generic { auth_prefix: format!("/{TOKEN}") }));
        let in_header = forward("", "/https/h.example/x", Some(TOKEN));
        assert_eq!(
            in_header.redirect,
            Some(Redirect::Generic { auth_prefix: String::new() }),
            "token not put in the path"
        );
        assert_eq!(forward("", "/test", None).redirect, None);
    }
}
