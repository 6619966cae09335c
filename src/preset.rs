//! Preset routes: `/<name>/…` → one of the preset's targets. The types
//! only; [`crate::config`] builds them from the built-ins and the file.

use std::collections::HashMap;
use std::sync::Arc;

use crate::balance::{Balance, Failover, RateLimits, Strategy};
use crate::config::ConfigError;
use crate::egress::ExitSet;
use crate::keys::Keyring;
use crate::policy::headers::UserAgent;
use crate::policy::target::{Origin, parse_url};
use crate::usage::count::Protocol;

/// What watches a preset's responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    None,
    Gemini,
}

/// One upstream target of a preset: an origin and a path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub origin: Origin,
    /// Path prefix without a trailing `/` (may be empty).
    pub base_path: String,
}

impl Target {
    pub(crate) fn parse(s: &str, key: &str) -> Result<Target, ConfigError> {
        let (origin, path) = parse_url(s).map_err(|e| ConfigError(format!("{key}: {e}")))?;
        if path.contains('?') {
            return Err(ConfigError(format!("{key}: a preset target may not have a query")));
        }
        Ok(Target { origin, base_path: path.trim_end_matches('/').to_owned() })
    }

    /// The URL as configured, for the dashboard and logs (no secrets here).
    pub fn url(&self) -> String {
        format!("{}{}", self.origin, self.base_path)
    }
}

/// A preset route: `/<name>/…` → one of `targets`.
#[derive(Debug)]
pub struct Preset {
    /// The route segment.
    pub route: String,
    pub display_name: String,
    pub targets: Vec<Target>,
    pub force_fetch: bool,
    pub user_agent: Option<UserAgent>,
    pub enabled: bool,
    pub monitor: Monitor,
    /// How the preset's API reports usage (`None`: it is not read).
    pub protocol: Option<Protocol>,
    /// Provider keys veilgate holds for this preset (SPEC §12).
    pub keys: Option<Arc<Keyring>>,
    /// The models it declares (`/<preset>/v1/models` answers from these).
    pub models: Vec<ModelInfo>,
    /// Its own `egress` (else `[upstream] egress`).
    pub exits: Option<Arc<ExitSet>>,
    /// Several targets and going again (§13).
    pub failover: Failover,
    /// The targets' health, with several targets (kept across reloads).
    pub balance: Option<Arc<Balance>>,
    /// Where the OpenAI protocol lives under a target (the unified
    /// endpoint's `/v1/…` goes to target + this + `/…`).
    pub openai_path: String,
    /// `requests_per_minute`, `tokens_per_minute` (§13).
    pub limits: Arc<RateLimits>,
    /// §14: the target continues a trailing assistant message.
    pub prefill: bool,
    /// §14: streams cut off are continued.
    pub continue_streams: bool,
    /// §14: the preset's own `stream_idle_timeout_ms`.
    pub stream_idle_timeout: Option<std::time::Duration>,
}

/// A declared model, in the seed vault's shape (`contextWindow`,
/// `maxOutputTokens`); other fields of the vault's are ignored.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    #[serde(rename = "contextWindow", default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    #[serde(rename = "maxOutputTokens", default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

impl Preset {
    #[allow(clippy::too_many_arguments)] // one per field; only the config builds presets
    pub(crate) fn new(
        route: String,
        display_name: String,
        targets: Vec<Target>,
        force_fetch: bool,
        user_agent: Option<UserAgent>,
        enabled: bool,
        monitor: Monitor,
    ) -> Preset {
        Preset {
            route,
            display_name,
            targets,
            force_fetch,
            user_agent,
            enabled,
            monitor,
            protocol: None,
            keys: None,
            models: Vec::new(),
            exits: None,
            failover: Failover::default(),
            balance: None,
            openai_path: "/v1".to_owned(),
            limits: Arc::new(RateLimits::default()),
            prefill: false,
            continue_streams: false,
            stream_idle_timeout: None,
        }
    }
}

/// All presets in display order, with a lookup by route segment.
#[derive(Debug, Default)]
pub struct Presets {
    list: Vec<Arc<Preset>>,
    index: HashMap<String, usize, foldhash::fast::RandomState>,
}

impl Presets {
    /// Adds a preset after the others (a later one of the same name wins
    /// the lookup).
    pub(crate) fn push(&mut self, preset: Preset) {
        self.index.insert(preset.route.clone(), self.list.len());
        self.list.push(Arc::new(preset));
    }

    /// The enabled preset named by a route segment.
    pub fn enabled(&self, segment: &str) -> Option<&Arc<Preset>> {
        self.index.get(segment).map(|&i| &self.list[i]).filter(|p| p.enabled)
    }

    /// The preset of `route`, enabled or not.
    pub fn get(&self, route: &str) -> Option<&Arc<Preset>> {
        self.index.get(route).and_then(|&i| self.list.get(i))
    }

    /// Changes every preset not shared yet (a configuration being built).
    pub(crate) fn each_mut(&mut self, mut f: impl FnMut(&mut Preset)) {
        for preset in &mut self.list {
            if let Some(p) = Arc::get_mut(preset) {
                f(p);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Preset>> {
        self.list.iter()
    }
}

/// An alias of the unified endpoint (§13): a model name that stands for
/// several `<preset>/<model>`, tried by `strategy`.
#[derive(Debug)]
pub struct Alias {
    pub name: String,
    pub members: Vec<Member>,
    pub strategy: Strategy,
    pub limits: Arc<RateLimits>,
    /// The members' health and rotation.
    pub balance: Arc<Balance>,
}

/// One member of an alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub preset: String,
    pub model: String,
}
