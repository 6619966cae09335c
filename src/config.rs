//! Configuration in two stages: [`RawConfig`] mirrors the TOML file (serde,
//! unknown keys refused), then [`Config::from_raw`] applies the environment
//! and validates everything into types that cannot be wrong.
//!
//! The auth token is resolved separately ([`Config::resolve_token`]) because
//! generating one writes a file; `check-config` must not.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::Token;
use crate::balance::{Balance, Failover, HealthSettings, RateLimits, Retry, Strategy};
use crate::client::{Client, Clients, parse_sha256, sha256};
use crate::dns::DohServer;
use crate::egress::{Exit, ExitChoice, ExitKind, ExitSet, Isolate, Resolve};
use crate::jwt::JwtAuth;
use crate::keys::vault::{self, VaultProvider};
use crate::keys::{KeyHeader, KeySource, Keyring, KeyringSpec, ProviderKey};
use crate::policy::headers::{ExtraAllow, UserAgent};
use crate::policy::target::{Host, Origin, Scheme, parse_url};
use crate::preset::{Alias, Member};
use crate::preset::{ModelInfo, Monitor, Preset, Presets, Target};
use crate::usage::count::Protocol;
use crate::usage::ledger::Limits as ClientLimits;
use crate::usage::price::{Price, Pricing};

/// A configuration error. The message names the key or variable at fault
/// and never repeats a secret value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

// ---------------------------------------------------------------- raw stage

/// The TOML file as written. Every field is optional; defaults are applied
/// in [`Config::from_raw`].
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preset_auth: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    danger_public_presets: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggressive_fallback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    force_fetch_default: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_dst_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cors_allow_origins: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    presets: BTreeMap<String, RawPreset>,
    #[serde(default)]
    gemini: RawGemini,
    #[serde(default)]
    websocket: RawWebsocket,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<RawTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    clients: Vec<RawClient>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<RawAuth>,
    #[serde(default)]
    usage: RawUsage,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pricing: BTreeMap<String, RawPrice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vault: Option<RawVault>,
    /// `[egress.NAME]`, in file order (the topology lists them so).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    egress: toml::Table,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    health: RawHealth,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    aliases: BTreeMap<String, RawAlias>,
    #[serde(default)]
    continuation: RawContinuation,
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(skip_serializing_if = "Option::is_none")]
    resolver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    doh_servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_max_ttl_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<String>,
}

/// One `[egress.NAME]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(skip_serializing_if = "Option::is_none")]
    socks5: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_connect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_authorization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    isolate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolve: Option<String>,
}

/// A name or a list of names (`egress = "tor"`, `egress = ["a", "b"]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn names(&self) -> Vec<String> {
        match self {
            OneOrMany::One(n) => vec![n.clone()],
            OneOrMany::Many(list) => list.clone(),
        }
    }
}

/// `[vault]`: the seed's encrypted file of providers and keys.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    file: PathBuf,
    passphrase: String,
}

/// `[clients.limits]` and `[auth.jwt_limits]` are read as
/// [`ClientLimits`] itself (its fields are the file's keys); this checks
/// what serde cannot.
fn check_limits(limits: Option<ClientLimits>, key: &str) -> Result<ClientLimits, ConfigError> {
    let limits = limits.unwrap_or_default();
    if limits.monthly_cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return err(format!("{key}.monthly_cost_usd must be a number of dollars, 0 or more"));
    }
    Ok(limits)
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inject_stream_usage: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reserve_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_headers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unpriced: Option<String>,
}

/// USD per million tokens of one model.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_input: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_write: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    /// HS256 key of the seed aiproxy's signed tokens (a secret value).
    jwt_hs256_secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_claim: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_limits: Option<ClientLimits>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_sha256: Option<String>,
    /// The token itself, or `env:NAME` / `file:PATH` (hashed at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generic: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<ClientLimits>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_idle_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_private_targets: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_choice: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_header_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_response_head_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_streams_per_connection: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_upstream_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_read_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    #[serde(skip_serializing_if = "Option::is_none")]
    targets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    force_fetch: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monitor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    /// Provider keys: `env:NAME`, `file:PATH` or the key itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_probe_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_probe_interval_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<Vec<ModelInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_choice: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weights: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<RawRetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_token_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_unanswered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    openai_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefill: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continue_streams: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_idle_timeout_ms: Option<u64>,
}

/// `[continuation]` (§14).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawContinuation {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_idle_timeout_ms: Option<u64>,
}

/// `[aliases.NAME]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_minute: Option<u64>,
}

/// A preset's `retry = { … }`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_ms: Option<u64>,
}

/// `[health]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(skip_serializing_if = "Option::is_none")]
    eject_after: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eject_for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_eject_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawGemini {
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    swallow_thoughts_after_retry: Option<bool>,
    #[serde(default)]
    prompts: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawWebsocket {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl RawConfig {
    /// The environment variables kept from the seed Worker, over the file.
    /// A value is checked here, so that an error names the variable.
    fn with_env(mut self, env: Env<'_>) -> Result<RawConfig, ConfigError> {
        if let Some(t) = env("AUTH_TOKEN") {
            Token::parse(&t, "environment variable AUTH_TOKEN")?;
            self.auth_token = Some(t);
        }
        if let Some(url) = env("DEFAULT_DST_URL") {
            parse_url(&url).map_err(|e| ConfigError(format!("environment variable DEFAULT_DST_URL: {e}")))?;
            self.default_dst_url = Some(url);
        }
        for (var, field) in [
            ("PRESET_AUTH_ENABLED", &mut self.preset_auth),
            ("AGGRESSIVE_FALLBACK", &mut self.aggressive_fallback),
            ("FORCE_FETCH_DEFAULT", &mut self.force_fetch_default),
            ("DEBUG_MODE", &mut self.debug),
            ("GEMINI_SPECIAL_HANDLING_ENABLED", &mut self.gemini.enabled),
        ] {
            if let Some(value) = env_bool(env, var)? {
                *field = Some(value);
            }
        }
        for (var, lang) in [("GEMINI_RETRY_PROMPT_CN", "zh"), ("GEMINI_RETRY_PROMPT_EN", "en")] {
            if let Some(prompt) = env(var) {
                self.gemini.prompts.insert(lang.to_owned(), prompt);
            }
        }
        Ok(self)
    }

    /// Parses TOML text; unknown keys and wrong types are errors naming the key.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("config file: {}", e.to_string().trim())))
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        RawConfig::from_toml(&text)
    }
}

// -------------------------------------------------------------- typed stage

/// `text` (human-readable) or `json` log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which web origins get CORS access (may read veilgate's responses from
/// a page in the user's browser).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// `["*"]`: every page on the web.
    Any,
    /// Exact origins, plus pages served from this machine (`http(s)://`
    /// localhost, `127.0.0.0/8`, `[::1]`, any port) when `loopback` — the
    /// default, `["loopback"]`.
    List { loopback: bool, origins: Vec<String> },
}

#[derive(Debug)]
pub struct UpstreamConfig {
    pub extra_ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub allow_private_targets: bool,
    /// `[upstream] egress`: how every connection leaves unless its preset
    /// says otherwise.
    pub exits: Arc<ExitSet>,
}

#[derive(Debug)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_response_head_bytes: usize,
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per downstream connection.
    pub max_streams_per_connection: u32,
    /// Upstream sockets open at once, over every transport and tunnel.
    pub max_upstream_connections: usize,
    pub header_read_timeout: Duration,
}

#[derive(Debug)]
pub struct HeaderConfig {
    pub allow: Vec<ExtraAllow>,
    pub user_agent: UserAgent,
}

#[derive(Clone, Debug)]
pub struct GeminiConfig {
    pub enabled: bool,
    pub max_retries: u32,
    pub retry_delay: Duration,
    pub idle_timeout: Duration,
    pub swallow_thoughts_after_retry: bool,
    pub prompts: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Set in the file or `AUTH_TOKEN`; otherwise see [`Config::resolve_token`].
    pub auth_token: Option<Token>,
    pub data_dir: Option<PathBuf>,
    /// `data_dir`, or the default one (where the token and usage live).
    pub state_dir: Option<PathBuf>,
    pub preset_auth: bool,
    pub danger_public_presets: bool,
    /// Lowercase host names accepted in `Host` while listening on loopback.
    pub allowed_hosts: Vec<String>,
    pub aggressive_fallback: bool,
    pub force_fetch_default: bool,
    /// Target of `/test`: origin and path-and-query.
    pub default_dst: (Origin, String),
    pub debug: bool,
    pub log_format: LogFormat,
    pub cors: Cors,
    pub shutdown_grace: Duration,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub headers: HeaderConfig,
    pub presets: Presets,
    /// Shared with every monitored stream as it is (one copy).
    pub gemini: Arc<GeminiConfig>,
    pub websocket_max_message_bytes: usize,
    pub tls: Option<TlsConfig>,
    /// `[[clients]]`: callers with their own tokens (SPEC §9).
    pub clients: Clients,
    pub usage: UsageConfig,
    pub pricing: Pricing,
    /// `[vault]`: the file and the passphrase as written (for check-config).
    pub vault: Option<(PathBuf, String)>,
    /// `[egress.*]` in file order.
    pub exits: Vec<Arc<Exit>>,
    /// The same as check-config prints them (secrets masked).
    egress_described: toml::Table,
    /// When this configuration was loaded (the topology's
    /// `topologyGeneratedAt`).
    pub loaded_at: std::time::SystemTime,
    pub dns: DnsConfig,
    /// `[health]`: when targets are ejected (§13).
    pub health: HealthSettings,
    /// `[aliases.*]`: model names of the unified endpoint (§13).
    pub aliases: Vec<Arc<Alias>>,
    /// `[continuation]`: how OpenAI streams are continued (§14).
    pub continuation: ContinuationConfig,
    /// `sha256:<hex>` of the file this was loaded from (and the `--listen`
    /// given), for `/healthz`; `none` when built otherwise.
    pub digest: String,
}

/// `[continuation]` (§14; Gemini's monitor keeps `[gemini]`).
#[derive(Clone, Debug)]
pub struct ContinuationConfig {
    pub max_retries: u32,
    pub retry_delay: Duration,
    pub stream_idle_timeout: Duration,
}

/// `[dns]`: DNS over HTTPS for upstream names (`servers` empty: the system
/// resolver).
#[derive(Debug)]
pub struct DnsConfig {
    /// The DoH servers (for the resolver, the relay, or both).
    pub servers: Vec<DohServer>,
    /// `resolver = "doh"`: upstream names are resolved with them.
    pub resolve: bool,
    /// `relay = true`: `/<token>/dns-query` passes DNS messages to them.
    pub relay: bool,
    pub cache_max_ttl: Duration,
    /// `bootstrap`: where DoH servers given by name are (never resolved).
    pub bootstrap: Vec<IpAddr>,
    /// How the DoH queries leave (default: `[upstream] egress`'s first).
    pub exits: Arc<ExitSet>,
}

/// Where settled requests are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `<data_dir>/veilgate.db`.
    Sqlite,
    Memory,
}

/// Which figures responses on metered routes carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostHeaders {
    Veilgate,
    /// The seed aiproxy's `cost`, `monthlyCost`, `monthlyRequests`.
    Aiproxy,
    Both,
    None,
}

/// `[usage]`.
#[derive(Clone, Copy, Debug)]
pub struct UsageConfig {
    pub store: StoreKind,
    pub inject_stream_usage: bool,
    pub reserve_output_tokens: u64,
    pub cost_headers: CostHeaders,
    /// `unpriced = "free"`: a client with a cost limit may use a model
    /// without a price (it costs nothing).
    pub unpriced_free: bool,
}

/// The protocol of a built-in preset: how its API reports usage.
fn builtin_protocol(route: &str) -> Option<Protocol> {
    match route {
        "claude" => Some(Protocol::Anthropic),
        "gemini" => Some(Protocol::Gemini),
        "openai" | "groq" | "xai" | "openrouter" | "mistral" | "deepseek" | "cerebras" | "together" | "fireworks"
        | "sambanova" | "novita" | "github" | "deepinfra" | "friendli" | "portkey" | "poe" | "chutes" | "targon"
        | "perplexity" => Some(Protocol::OpenAi),
        _ => None,
    }
}

pub(crate) fn protocol_name(p: Option<Protocol>) -> &'static str {
    match p {
        Some(Protocol::OpenAi) => "openai",
        Some(Protocol::Anthropic) => "anthropic",
        Some(Protocol::Gemini) => "gemini",
        None => "none",
    }
}

/// Built-in presets (route, display name, target); all socket-first.
const BUILTIN_PRESETS: &[(&str, &str, &str)] = &[
    ("openai", "OpenAI", "https://api.openai.com"),
    ("claude", "Anthropic Claude", "https://api.anthropic.com"),
    ("gemini", "Google Gemini", "https://generativelanguage.googleapis.com"),
    ("groq", "Groq", "https://api.groq.com/openai"),
    ("xai", "xAI", "https://api.x.ai"),
    ("openrouter", "OpenRouter", "https://openrouter.ai/api"),
    ("mistral", "Mistral", "https://api.mistral.ai"),
    ("deepseek", "DeepSeek", "https://api.deepseek.com"),
    ("cerebras", "Cerebras", "https://api.cerebras.ai"),
    ("cohere", "Cohere", "https://api.cohere.ai"),
    ("together", "Together AI", "https://api.together.xyz"),
    ("fireworks", "Fireworks AI", "https://api.fireworks.ai/inference"),
    ("sambanova", "SambaNova", "https://api.sambanova.ai"),
    ("novita", "Novita AI", "https://api.novita.ai"),
    ("huggingface", "Hugging Face", "https://api-inference.huggingface.co"),
    ("github", "GitHub Models", "https://models.github.ai"),
    ("deepinfra", "DeepInfra", "https://api.deepinfra.com"),
    ("friendli", "Friendli", "https://api.friendli.ai/serverless"),
    ("portkey", "Portkey", "https://api.portkey.ai"),
    ("poe", "Poe", "https://api.poe.com"),
    ("chutes", "Chutes", "https://llm.chutes.ai"),
    ("targon", "Targon", "https://api.targon.ai"),
    ("perplexity", "Perplexity", "https://api.perplexity.ai"),
    ("telegram", "Telegram Bot API", "https://api.telegram.org"),
    ("discord", "Discord", "https://discord.com/api"),
    ("meta", "Meta AI", "https://www.meta.ai/api"),
];

/// Route segments that can never be preset names.
const RESERVED_NAMES: &[&str] =
    &["healthz", "metrics", "test", "usage", "http", "https", "ws", "wss", "v1", "internal", "dns-query"];

/// Reads environment variables; tests pass a closure over a map.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, with empty values treated as unset (so an empty
/// `AUTH_TOKEN=` in a compose file means "not set", not "invalid").
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_bool(env: Env<'_>, name: &str) -> Result<Option<bool>, ConfigError> {
    match env(name) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => err(format!("environment variable {name} must be true or false")),
    }
}

/// `listen`: an address (`127.0.0.1:8080`, `[::1]:8080`) or a host name
/// and port (`localhost:9000`, resolved once, IPv4 first).
fn listen_addr(value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let bad = || ConfigError(format!("listen: \"{value}\" is not an address such as 127.0.0.1:8080 or localhost:8080"));
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|_| bad())?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(bad)
}

fn ms(value: Option<u64>, default: u64, key: &str) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => err(format!("{key} must be at least 1")),
        v => Ok(Duration::from_millis(v)),
    }
}

fn positive(value: Option<u64>, default: u64, key: &str) -> Result<u64, ConfigError> {
    match value.unwrap_or(default) {
        0 => err(format!("{key} must be at least 1")),
        v => Ok(v),
    }
}

fn usize_of(v: u64, key: &str) -> Result<usize, ConfigError> {
    usize::try_from(v).map_err(|_| ConfigError(format!("{key} is too large")))
}

impl Config {
    /// The built-in defaults, as `veilgate` with no config file runs.
    pub fn defaults(env: Env<'_>) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::default(), env)
    }

    /// Applies the environment to the raw configuration, then validates.
    pub fn from_raw(raw: RawConfig, env: Env<'_>) -> Result<Config, ConfigError> {
        let raw = raw.with_env(env)?;
        let listen = listen_addr(raw.listen.as_deref().unwrap_or("127.0.0.1:8080"))?;

        let auth_token = raw.auth_token.as_deref().map(|t| Token::parse(t, "auth_token")).transpose()?;
        let preset_auth = raw.preset_auth.unwrap_or(false);
        let danger_public_presets = raw.danger_public_presets.unwrap_or(false);

        let mut allowed_hosts = Vec::new();
        for h in raw.allowed_hosts.unwrap_or_default() {
            if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f) {
                return err("allowed_hosts: each entry must be a host name, without scheme or path");
            }
            allowed_hosts.push(h.to_ascii_lowercase());
        }

        let aggressive_fallback = raw.aggressive_fallback.unwrap_or(true);
        let force_fetch_default = raw.force_fetch_default.unwrap_or(false);
        let dst = raw.default_dst_url.as_deref().unwrap_or("https://httpbin.org/get");
        let default_dst = parse_url(dst).map_err(|e| ConfigError(format!("default_dst_url: {e}")))?;
        let debug = raw.debug.unwrap_or(false);
        let log_format = match raw.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return err("log_format must be \"text\" or \"json\""),
        };
        let cors = match raw.cors_allow_origins {
            None => Cors::List { loopback: true, origins: Vec::new() },
            Some(list) if list.iter().any(|o| o == "*") => {
                if list.len() > 1 {
                    return err("cors_allow_origins: \"*\" cannot be combined with other origins");
                }
                Cors::Any
            }
            Some(list) => {
                let loopback = list.iter().any(|o| o == "loopback");
                let origins: Vec<String> = list.into_iter().filter(|o| o != "loopback").collect();
                for o in &origins {
                    if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                        return err(
                            "cors_allow_origins: each entry must be \"loopback\" or look like https://host[:port]",
                        );
                    }
                }
                Cors::List { loopback, origins }
            }
        };
        let shutdown_grace = Duration::from_millis(raw.shutdown_grace_ms.unwrap_or(30_000));

        let u = raw.upstream;
        let (exits, egress_described) = build_exits(&raw.egress, env)?;
        let upstream_exits = exit_set(u.egress.as_ref(), u.exit_choice.as_deref(), &exits, "upstream")?;
        let upstream = UpstreamConfig {
            exits: upstream_exits,
            extra_ca_file: u.extra_ca_file,
            connect_timeout: ms(u.connect_timeout_ms, 10_000, "upstream.connect_timeout_ms")?,
            response_timeout: ms(u.response_timeout_ms, 300_000, "upstream.response_timeout_ms")?,
            idle_timeout: ms(u.idle_timeout_ms, 300_000, "upstream.idle_timeout_ms")?,
            pool_idle_timeout: ms(u.pool_idle_timeout_ms, 20_000, "upstream.pool_idle_timeout_ms")?,
            allow_private_targets: u.allow_private_targets.unwrap_or(false),
        };

        let l = raw.limits;
        let max_header_bytes = l.max_header_bytes.unwrap_or(65_536);
        if max_header_bytes < 8192 {
            return err("limits.max_header_bytes must be at least 8192");
        }
        let max_response_head_bytes = positive(l.max_response_head_bytes, 65_536, "limits.max_response_head_bytes")?;
        let limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(32 * 1024 * 1024),
            max_header_bytes: usize_of(max_header_bytes, "limits.max_header_bytes")?,
            max_response_head_bytes: usize_of(max_response_head_bytes, "limits.max_response_head_bytes")?,
            max_connections: usize_of(
                positive(l.max_connections, 10_000, "limits.max_connections")?,
                "limits.max_connections",
            )?,
            max_streams_per_connection: u32::try_from(positive(
                l.max_streams_per_connection,
                100,
                "limits.max_streams_per_connection",
            )?)
            .map_err(|_| ConfigError("limits.max_streams_per_connection is too large".into()))?,
            max_upstream_connections: usize_of(
                positive(l.max_upstream_connections, 10_000, "limits.max_upstream_connections")?,
                "limits.max_upstream_connections",
            )?,
            header_read_timeout: ms(l.header_read_timeout_ms, 30_000, "limits.header_read_timeout_ms")?,
        };

        let mut allow = Vec::new();
        for entry in raw.headers.allow.unwrap_or_default() {
            allow.push(ExtraAllow::parse(&entry).map_err(|e| ConfigError(format!("headers.allow: {e}")))?);
        }
        let user_agent = match raw.headers.user_agent {
            None => UserAgent::default(),
            Some(s) => {
                UserAgent::parse(&s).map_err(|_| ConfigError("headers.user_agent: not a valid header value".into()))?
            }
        };
        let headers = HeaderConfig { allow, user_agent };

        let vault = match &raw.vault {
            Some(v) => read_vault(v, env)?,
            None => BTreeMap::new(),
        };
        let presets = build_presets(raw.presets, vault, &exits, env)?;
        let aliases = build_aliases(raw.aliases, &presets)?;
        let c = raw.continuation;
        let continuation = ContinuationConfig {
            max_retries: c.max_retries.unwrap_or(3),
            retry_delay: Duration::from_millis(c.retry_delay_ms.unwrap_or(500)),
            stream_idle_timeout: ms(c.stream_idle_timeout_ms, 30_000, "continuation.stream_idle_timeout_ms")?,
        };
        let dns = build_dns(raw.dns, &exits, &upstream.exits)?;
        let h = raw.health;
        let health = HealthSettings {
            eject_after: h.eject_after.unwrap_or(3).max(1),
            eject_for: ms(h.eject_for_ms, 2000, "health.eject_for_ms")?,
            max_eject: ms(h.max_eject_ms, 30_000, "health.max_eject_ms")?,
        };
        if health.max_eject < health.eject_for {
            return err("health.max_eject_ms must be at least health.eject_for_ms");
        }

        let g = raw.gemini;
        let mut prompts = BTreeMap::new();
        for (lang, prompt) in g.prompts {
            if lang.len() != 2 || !lang.bytes().all(|b| b.is_ascii_lowercase()) {
                return err(format!("gemini.prompts.{lang}: keys must be two-letter language codes"));
            }
            if prompt.trim().is_empty() {
                return err(format!("gemini.prompts.{lang}: prompt is empty"));
            }
            prompts.insert(lang, prompt);
        }
        let gemini = Arc::new(GeminiConfig {
            enabled: g.enabled.unwrap_or(true),
            max_retries: g.max_retries.unwrap_or(5),
            retry_delay: Duration::from_millis(g.retry_delay_ms.unwrap_or(750)),
            idle_timeout: ms(g.idle_timeout_ms, 60_000, "gemini.idle_timeout_ms")?,
            swallow_thoughts_after_retry: g.swallow_thoughts_after_retry.unwrap_or(true),
            prompts,
        });

        let websocket_max_message_bytes = usize_of(
            positive(raw.websocket.max_message_bytes, 16 * 1024 * 1024, "websocket.max_message_bytes")?,
            "websocket.max_message_bytes",
        )?;
        let tls = raw.tls.map(|t| TlsConfig { cert_file: t.cert_file, key_file: t.key_file });
        let mut clients = build_clients(raw.clients, &presets, env)?;
        if let Some(auth) = raw.auth {
            let secret = resolve_secret(&auth.jwt_hs256_secret, "auth.jwt_hs256_secret", env)?;
            let limits = check_limits(auth.jwt_limits, "auth.jwt_limits")?;
            let jwt = JwtAuth::new(secret.as_bytes(), auth.jwt_claim.unwrap_or_else(|| "email".to_owned()));
            clients.accept_jwts(jwt, limits);
        }
        let u = raw.usage;
        let usage = UsageConfig {
            store: match u.store.as_deref().unwrap_or("sqlite") {
                "sqlite" => StoreKind::Sqlite,
                "memory" => StoreKind::Memory,
                _ => return err("usage.store must be \"sqlite\" or \"memory\""),
            },
            inject_stream_usage: u.inject_stream_usage.unwrap_or(true),
            reserve_output_tokens: u.reserve_output_tokens.unwrap_or(4096),
            cost_headers: match u.cost_headers.as_deref().unwrap_or("veilgate") {
                "veilgate" => CostHeaders::Veilgate,
                "aiproxy" => CostHeaders::Aiproxy,
                "both" => CostHeaders::Both,
                "none" => CostHeaders::None,
                _ => return err("usage.cost_headers must be \"veilgate\", \"aiproxy\", \"both\" or \"none\""),
            },
            unpriced_free: match u.unpriced.as_deref().unwrap_or("refuse") {
                "refuse" => false,
                "free" => true,
                _ => return err("usage.unpriced must be \"refuse\" or \"free\""),
            },
        };
        let mut prices = Vec::new();
        for (model, p) in raw.pricing {
            let key = format!("pricing.\"{model}\"");
            if model.is_empty() {
                return err("pricing: a model name may not be empty");
            }
            if p.cached_input.is_some() && p.cache_read.is_some() {
                return err(format!("{key}: cached_input and cache_read are the same rate; set one"));
            }
            let rates = [Some(p.input), p.output, p.cached_input, p.cache_read, p.cache_write];
            if rates.iter().flatten().any(|r| !r.is_finite() || *r < 0.0) {
                return err(format!("{key}: rates are USD per million tokens, 0 or more"));
            }
            let cache_read = p.cached_input.or(p.cache_read).unwrap_or(p.input);
            let price = Price {
                input: p.input,
                output: p.output.unwrap_or(0.0),
                cache_read,
                cache_write: p.cache_write.unwrap_or(p.input),
            };
            prices.push((model, price));
        }
        let pricing = Pricing::new(prices);

        let state_dir = data_dir_of(raw.data_dir.as_deref(), env);
        let config = Config {
            listen,
            auth_token,
            state_dir,
            data_dir: raw.data_dir,
            preset_auth,
            danger_public_presets,
            allowed_hosts,
            aggressive_fallback,
            force_fetch_default,
            default_dst,
            debug,
            log_format,
            cors,
            shutdown_grace,
            upstream,
            limits,
            headers,
            presets,
            gemini,
            websocket_max_message_bytes,
            tls,
            clients,
            usage,
            pricing,
            vault: raw.vault.map(|v| (v.file, v.passphrase)),
            exits,
            egress_described,
            loaded_at: std::time::SystemTime::now(),
            dns,
            health,
            aliases,
            continuation,
            digest: "none".to_owned(),
        };
        config.check_exposure()?;
        Ok(config)
    }

    /// Loads the file (if any), applies the environment and `--listen`.
    pub fn load(path: Option<&Path>, listen: Option<&str>, env: Env<'_>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", p.display())))?,
            None => String::new(),
        };
        let mut raw = if path.is_some() { RawConfig::from_toml(&text)? } else { RawConfig::default() };
        if let Some(l) = listen {
            raw.listen = Some(l.to_owned());
        }
        let mut config = Config::from_raw(raw, env)?;
        config.digest = digest(text.as_bytes(), listen);
        Ok(config)
    }

    /// Hands on the state of what this configuration keeps from `old`
    /// (SPEC §13 live reload): a preset's target health when its targets
    /// are the same, its keys' states when its keys are, what its rate
    /// limits used (a changed limit keeps the amount used); an alias's
    /// member health and its limits likewise. Everything else is new.
    pub fn carry_from(&mut self, old: &Config) {
        let now = std::time::Instant::now();
        let carried = |new: &RateLimits, had: &RateLimits| {
            let rate = |b: &Option<crate::balance::Bucket>| b.as_ref().map(|b| b.per_minute());
            Arc::new(RateLimits::carried(rate(&new.requests), rate(&new.tokens), Some(had), now))
        };
        self.presets.each_mut(|p| {
            let Some(o) = old.presets.get(&p.route) else { return };
            let same_targets = p.targets.iter().map(Target::url).eq(o.targets.iter().map(Target::url));
            if same_targets && o.balance.is_some() && p.balance.is_some() {
                p.balance = o.balance.clone();
            }
            if let (Some(new), Some(had)) = (&p.keys, &o.keys)
                && new.same_as(had)
            {
                p.keys = Some(Arc::clone(had));
            }
            p.limits = carried(&p.limits, &o.limits);
        });
        for alias in &mut self.aliases {
            let Some(o) = old.aliases.iter().find(|a| a.name == alias.name) else { continue };
            let Some(a) = Arc::get_mut(alias) else { continue };
            if a.members == o.members {
                a.balance = Arc::clone(&o.balance);
            }
            a.limits = carried(&a.limits, &o.limits);
        }
    }

    /// Refuses an open relay: presets without auth on a non-loopback address.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && !self.preset_auth && !self.danger_public_presets {
            return err(format!(
                "listen: {} is not a loopback address and preset_auth is off, so anyone who \
                 can reach it could use veilgate as an open relay; turn on preset_auth \
                 (PRESET_AUTH_ENABLED=true) or set danger_public_presets = true",
                self.listen
            ));
        }
        Ok(())
    }

    /// Where a generated token lives.
    pub fn token_path(&self, env: Env<'_>) -> Option<PathBuf> {
        data_dir_of(self.data_dir.as_deref(), env).map(|d| d.join("token"))
    }

    /// The configured token, or the one stored in `<data_dir>/token`,
    /// generated (32 random bytes, URL-safe base64, file mode 0600) on the
    /// first start. Returns the token and, when it came from the file, its path.
    pub fn resolve_token(&self, env: Env<'_>) -> Result<(Token, Option<PathBuf>), ConfigError> {
        if let Some(t) = &self.auth_token {
            return Ok((t.clone(), None));
        }
        let path = self
            .token_path(env)
            .ok_or_else(|| ConfigError("no auth_token set and neither data_dir, XDG_DATA_HOME nor HOME".into()))?;
        let token = load_or_create_token(&path)?;
        Ok((token, Some(path)))
    }

    /// The effective configuration as TOML that veilgate would accept
    /// (`check-config`): every key with the value in force — file,
    /// environment and defaults applied — and secrets masked. It is built as
    /// a [`RawConfig`] with every field filled, so a key added to the file
    /// format cannot be left out here without the compiler noticing.
    pub fn describe(&self, env: Env<'_>) -> String {
        let mut out =
            String::from("# veilgate: the effective configuration (file, environment, defaults); secrets masked\n");
        if self.auth_token.is_none() {
            out.push_str("# auth_token is not set: one is generated once and kept in <data_dir>/token\n");
        }
        match toml::to_string(&self.effective_raw(env)) {
            Ok(text) => out.push_str(&text),
            Err(e) => out.push_str(&format!("# the configuration could not be printed: {e}\n")),
        }
        out
    }

    /// This configuration as the file that would give it.
    fn effective_raw(&self, env: Env<'_>) -> RawConfig {
        let ms = |d: Duration| Some(d.as_millis() as u64);
        let agent = |ua: &UserAgent| match ua {
            UserAgent::Strip => "strip".to_owned(),
            UserAgent::Pass => "pass".to_owned(),
            UserAgent::Literal(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        };
        let presets = self
            .presets
            .iter()
            .map(|p| {
                let raw = RawPreset {
                    targets: Some(p.targets.iter().map(Target::url).collect()),
                    force_fetch: Some(p.force_fetch || self.force_fetch_default),
                    name: Some(p.display_name.clone()),
                    user_agent: Some(agent(p.user_agent.as_ref().unwrap_or(&self.headers.user_agent))),
                    enabled: Some(p.enabled),
                    monitor: Some(match p.monitor {
                        Monitor::Gemini => "gemini".to_owned(),
                        Monitor::None => "none".to_owned(),
                    }),
                    protocol: Some(protocol_name(p.protocol).to_owned()),
                    // Keys as written (`env:`/`file:`), literal ones masked;
                    // the vault's are in its file.
                    keys: p.keys.as_ref().map(|ring| {
                        ring.keys()
                            .iter()
                            .filter_map(|k| match &k.source {
                                KeySource::Reference(written) => Some(written.clone()),
                                KeySource::Literal => Some(k.masked().to_owned()),
                                KeySource::Vault => None,
                            })
                            .collect()
                    }),
                    key_header: p.keys.as_ref().map(|ring| ring.header().as_str().to_owned()),
                    key_probe_path: p.keys.as_ref().map(|ring| ring.probe_path.clone()),
                    key_probe_interval_s: p.keys.as_ref().map(|ring| ring.probe_interval.as_secs()),
                    models: Some(p.models.clone()).filter(|m| !m.is_empty()),
                    egress: p.exits.as_deref().map(set_names),
                    exit_choice: p.exits.as_deref().map(|e| choice_name(e.choice).to_owned()),
                    weights: Some(p.failover.weights.clone()).filter(|w| !w.is_empty()),
                    strategy: Some(p.failover.strategy.name().to_owned()),
                    retry: Some(RawRetry {
                        attempts: Some(p.failover.retry.attempts),
                        on: Some(p.failover.retry.on.clone()),
                        backoff_ms: ms(p.failover.retry.backoff),
                    }),
                    first_token_timeout_ms: Some(p.failover.first_token_timeout.map_or(0, |d| d.as_millis() as u64)),
                    retry_unanswered: Some(p.failover.retry_unanswered),
                    openai_path: Some(p.openai_path.clone()),
                    requests_per_minute: p.limits.requests.as_ref().map(|b| b.per_minute()),
                    tokens_per_minute: p.limits.tokens.as_ref().map(|b| b.per_minute()),
                    prefill: Some(p.prefill),
                    continue_streams: Some(p.continue_streams),
                    stream_idle_timeout_ms: p.stream_idle_timeout.map(|d| d.as_millis() as u64),
                };
                (p.route.clone(), raw)
            })
            .collect();
        let g = &self.gemini;
        let mut prompts: BTreeMap<String, String> =
            crate::monitor::prompts::BUILTIN.iter().map(|(lang, p)| ((*lang).to_owned(), (*p).to_owned())).collect();
        prompts.extend(g.prompts.clone());
        RawConfig {
            listen: Some(self.listen.to_string()),
            auth_token: self.auth_token.as_ref().map(|_| "***".to_owned()),
            data_dir: self.token_path(env).and_then(|t| t.parent().map(Path::to_path_buf)),
            preset_auth: Some(self.preset_auth),
            danger_public_presets: Some(self.danger_public_presets),
            allowed_hosts: Some(self.allowed_hosts.clone()),
            aggressive_fallback: Some(self.aggressive_fallback),
            force_fetch_default: Some(self.force_fetch_default),
            default_dst_url: Some(format!("{}{}", self.default_dst.0, self.default_dst.1)),
            debug: Some(self.debug),
            log_format: Some(
                match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .to_owned(),
            ),
            cors_allow_origins: Some(match &self.cors {
                Cors::Any => vec!["*".to_owned()],
                Cors::List { loopback, origins } => {
                    let mut list: Vec<String> = loopback.then(|| "loopback".to_owned()).into_iter().collect();
                    list.extend(origins.iter().cloned());
                    list
                }
            }),
            shutdown_grace_ms: ms(self.shutdown_grace),
            upstream: RawUpstream {
                extra_ca_file: self.upstream.extra_ca_file.clone(),
                connect_timeout_ms: ms(self.upstream.connect_timeout),
                response_timeout_ms: ms(self.upstream.response_timeout),
                idle_timeout_ms: ms(self.upstream.idle_timeout),
                pool_idle_timeout_ms: ms(self.upstream.pool_idle_timeout),
                allow_private_targets: Some(self.upstream.allow_private_targets),
                egress: Some(set_names(&self.upstream.exits)),
                exit_choice: Some(choice_name(self.upstream.exits.choice).to_owned()),
            },
            limits: RawLimits {
                max_body_bytes: Some(self.limits.max_body_bytes),
                max_header_bytes: Some(self.limits.max_header_bytes as u64),
                max_response_head_bytes: Some(self.limits.max_response_head_bytes as u64),
                max_connections: Some(self.limits.max_connections as u64),
                max_streams_per_connection: Some(u64::from(self.limits.max_streams_per_connection)),
                max_upstream_connections: Some(self.limits.max_upstream_connections as u64),
                header_read_timeout_ms: ms(self.limits.header_read_timeout),
            },
            headers: RawHeaders {
                allow: Some(
                    self.headers
                        .allow
                        .iter()
                        .map(|a| match a {
                            ExtraAllow::Name(n) => n.as_str().to_owned(),
                            ExtraAllow::Prefix(p) => format!("{p}*"),
                        })
                        .collect(),
                ),
                user_agent: Some(agent(&self.headers.user_agent)),
            },
            presets,
            gemini: RawGemini {
                enabled: Some(g.enabled),
                max_retries: Some(g.max_retries),
                retry_delay_ms: ms(g.retry_delay),
                idle_timeout_ms: ms(g.idle_timeout),
                swallow_thoughts_after_retry: Some(g.swallow_thoughts_after_retry),
                prompts,
            },
            websocket: RawWebsocket { max_message_bytes: Some(self.websocket_max_message_bytes as u64) },
            tls: self.tls.as_ref().map(|t| RawTls { cert_file: t.cert_file.clone(), key_file: t.key_file.clone() }),
            clients: self
                .clients
                .iter()
                .map(|c| RawClient {
                    name: c.name.to_string(),
                    token_sha256: Some("***".to_owned()),
                    token: None,
                    presets: c.presets.clone(),
                    generic: Some(c.generic),
                    limits: Some(c.limits).filter(|l| !l.is_empty()),
                })
                .collect(),
            auth: self.clients.jwt_claim().map(|claim| RawAuth {
                jwt_hs256_secret: "***".to_owned(),
                jwt_claim: Some(claim.to_owned()),
                jwt_limits: Some(*self.clients.jwt_limits()).filter(|l| !l.is_empty()),
            }),
            usage: RawUsage {
                store: Some(
                    match self.usage.store {
                        StoreKind::Sqlite => "sqlite",
                        StoreKind::Memory => "memory",
                    }
                    .to_owned(),
                ),
                inject_stream_usage: Some(self.usage.inject_stream_usage),
                reserve_output_tokens: Some(self.usage.reserve_output_tokens),
                cost_headers: Some(
                    match self.usage.cost_headers {
                        CostHeaders::Veilgate => "veilgate",
                        CostHeaders::Aiproxy => "aiproxy",
                        CostHeaders::Both => "both",
                        CostHeaders::None => "none",
                    }
                    .to_owned(),
                ),
                unpriced: Some(if self.usage.unpriced_free { "free" } else { "refuse" }.to_owned()),
            },
            pricing: self
                .pricing
                .iter()
                .map(|(model, p)| {
                    let raw = RawPrice {
                        input: p.input,
                        output: Some(p.output),
                        cached_input: Some(p.cache_read),
                        cache_read: None,
                        cache_write: Some(p.cache_write),
                    };
                    (model.to_owned(), raw)
                })
                .collect(),
            egress: self.egress_described.clone(),
            dns: RawDns {
                resolver: Some(if self.dns.resolve { "doh" } else { "system" }.to_owned()),
                doh_servers: Some(self.dns.servers.iter().map(|s| format!("{}{}", s.origin, s.path)).collect()),
                bootstrap: Some(self.dns.bootstrap.iter().map(|ip| ip.to_string()).collect()),
                cache_max_ttl_s: Some(self.dns.cache_max_ttl.as_secs()),
                relay: Some(self.dns.relay),
                egress: Some(match set_names(&self.dns.exits) {
                    OneOrMany::One(n) => n,
                    OneOrMany::Many(list) => list.into_iter().next().unwrap_or_else(|| "direct".to_owned()),
                }),
            },
            aliases: self
                .aliases
                .iter()
                .map(|a| {
                    let raw = RawAlias {
                        models: a.members.iter().map(|m| format!("{}/{}", m.preset, m.model)).collect(),
                        strategy: Some(a.strategy.name().to_owned()),
                        requests_per_minute: a.limits.requests.as_ref().map(|b| b.per_minute()),
                        tokens_per_minute: a.limits.tokens.as_ref().map(|b| b.per_minute()),
                    };
                    (a.name.clone(), raw)
                })
                .collect(),
            continuation: RawContinuation {
                max_retries: Some(self.continuation.max_retries),
                retry_delay_ms: ms(self.continuation.retry_delay),
                stream_idle_timeout_ms: ms(self.continuation.stream_idle_timeout),
            },
            health: RawHealth {
                eject_after: Some(self.health.eject_after),
                eject_for_ms: ms(self.health.eject_for),
                max_eject_ms: ms(self.health.max_eject),
            },
            vault: self.vault.as_ref().map(|(file, passphrase)| RawVault {
                file: file.clone(),
                passphrase: if passphrase.starts_with("env:") || passphrase.starts_with("file:") {
                    passphrase.clone()
                } else {
                    "***".to_owned()
                },
            }),
        }
    }

    /// What `check-config` warns about (one line each, on stderr): provider
    /// keys written into the file itself.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.presets.iter() {
            let Some(ring) = &p.keys else { continue };
            for (i, k) in ring.keys().iter().enumerate() {
                if k.source == KeySource::Literal {
                    out.push(format!(
                        "presets.{}.keys[{i}]: the key ({}) is written in the file; prefer \"env:NAME\" or \"file:PATH\"",
                        p.route,
                        k.masked()
                    ));
                }
            }
        }
        out
    }
}

/// The providers of `[vault]`, decrypted. Errors name the file, never what
/// it holds.
fn read_vault(v: &RawVault, env: Env<'_>) -> Result<BTreeMap<String, VaultProvider>, ConfigError> {
    let file = v.file.display();
    let passphrase = resolve_secret(&v.passphrase, "vault.passphrase", env)?;
    let text = std::fs::read_to_string(&v.file)
        .map_err(|e| ConfigError(format!("vault: cannot read {file}: {}", e.kind())))?;
    let plain = vault::decrypt(&text, passphrase.as_bytes()).map_err(|e| ConfigError(format!("vault {file}: {e}")))?;
    vault::providers(&plain).map_err(|e| ConfigError(format!("vault {file}: {e}")))
}

fn build_presets(
    raw: BTreeMap<String, RawPreset>,
    mut vault: BTreeMap<String, VaultProvider>,
    exits: &[Arc<Exit>],
    env: Env<'_>,
) -> Result<Presets, ConfigError> {
    let mut presets = Presets::default();
    let mut raw = raw;
    // A vault provider is (or merges into) the preset of its name.
    for name in vault.keys() {
        raw.entry(name.clone()).or_default();
    }
    let builtins = BUILTIN_PRESETS.iter().map(|&(route, name, target)| (route, Some((name, target))));
    let added: Vec<String> = raw.keys().filter(|k| !BUILTIN_PRESETS.iter().any(|(r, _, _)| r == k)).cloned().collect();
    let all: Vec<(String, Option<(&str, &str)>)> =
        builtins.map(|(r, b)| (r.to_owned(), b)).chain(added.into_iter().map(|r| (r, None))).collect();
    for (route, builtin) in all {
        let key = format!("presets.{route}");
        let over = raw.remove(&route).unwrap_or_default();
        let from_vault = vault.remove(&route);
        if builtin.is_none() {
            let ok = !route.is_empty()
                && route.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !ok {
                return err(format!("{key}: preset names must match [a-z0-9_-]+"));
            }
            if RESERVED_NAMES.contains(&route.as_str()) || route.bytes().all(|b| b.is_ascii_digit()) {
                return err(format!("{key}: '{route}' is reserved and cannot name a preset"));
            }
        }
        let vault_target = from_vault.as_ref().map(|v| v.target.clone());
        let targets = match (over.targets, vault_target, builtin) {
            (Some(list), _, _) => {
                if list.is_empty() {
                    return err(format!("{key}.targets: needs at least one URL"));
                }
                list.iter().map(|t| Target::parse(t, &format!("{key}.targets"))).collect::<Result<Vec<_>, _>>()?
            }
            (None, Some(url), _) => vec![Target::parse(&url, &format!("vault provider {route}: endpoint"))?],
            (None, None, Some((_, url))) => vec![Target::parse(url, &key)?],
            (None, None, None) => return err(format!("{key}.targets: a new preset needs targets")),
        };
        let user_agent = match over.user_agent {
            None => None,
            Some(s) => Some(
                UserAgent::parse(&s).map_err(|_| ConfigError(format!("{key}.user_agent: not a valid header value")))?,
            ),
        };
        let monitor = match over.monitor.as_deref() {
            None if route == "gemini" && builtin.is_some() => Monitor::Gemini,
            None | Some("none") => Monitor::None,
            Some("gemini") => Monitor::Gemini,
            Some(_) => return err(format!("{key}.monitor must be \"gemini\" or \"none\"")),
        };
        let vault_protocol = from_vault.as_ref().and_then(|v| v.protocol.clone());
        let protocol = match over.protocol.as_deref().or(vault_protocol.as_deref()) {
            None if builtin.is_some() => builtin_protocol(&route),
            None | Some("none") => None,
            Some("openai") => Some(Protocol::OpenAi),
            Some("anthropic") => Some(Protocol::Anthropic),
            Some("gemini") => Some(Protocol::Gemini),
            Some(_) => return err(format!("{key}.protocol must be \"openai\", \"anthropic\", \"gemini\" or \"none\"")),
        };
        let display_name =
            over.name.unwrap_or_else(|| builtin.map(|(n, _)| n.to_owned()).unwrap_or_else(|| route.clone()));
        let mut preset = Preset::new(
            route,
            display_name,
            targets,
            // A new preset without force_fetch follows force_fetch_default,
            // which the plan applies to every preset anyway.
            over.force_fetch.unwrap_or(false),
            user_agent,
            over.enabled.unwrap_or(true),
            monitor,
        );
        preset.protocol = protocol;
        let (vault_keys, vault_models) = from_vault.map(|v| (v.keys, v.models)).unwrap_or_default();
        preset.models = over.models.unwrap_or(vault_models);
        let held = KeysSpec {
            keys: over.keys.unwrap_or_default(),
            vault_keys,
            header: over.key_header,
            probe_path: over.key_probe_path,
            probe_interval_s: over.key_probe_interval_s,
        };
        preset.keys = build_keyring(&key, held, protocol, &preset.targets, env)?.map(Arc::new);
        if over.egress.is_some() || over.exit_choice.is_some() {
            preset.exits = Some(exit_set(over.egress.as_ref(), over.exit_choice.as_deref(), exits, &key)?);
        }
        preset.failover = build_failover(&key, preset.targets.len(), over.strategy, over.weights, over.retry)?;
        preset.failover.first_token_timeout = over.first_token_timeout_ms.filter(|&t| t > 0).map(Duration::from_millis);
        preset.failover.retry_unanswered = over.retry_unanswered.unwrap_or(false);
        preset.openai_path = match over.openai_path {
            Some(p) if p.is_empty() || (p.starts_with('/') && !p.ends_with('/')) => p,
            Some(_) => return err(format!("{key}.openai_path must start with / and not end with one")),
            None if preset.route == "gemini" && builtin.is_some() => "/v1beta/openai".to_owned(),
            None => "/v1".to_owned(),
        };
        preset.limits =
            Arc::new(RateLimits::new(over.requests_per_minute, over.tokens_per_minute, std::time::Instant::now()));
        // §14: built-in presets with a protocol continue their streams;
        // Anthropic's built-in continues a prefill.
        preset.prefill = over.prefill.unwrap_or(builtin.is_some() && preset.route == "claude");
        preset.continue_streams = over.continue_streams.unwrap_or(builtin.is_some() && protocol.is_some());
        preset.stream_idle_timeout = over
            .stream_idle_timeout_ms
            .map(|t| ms(Some(t), 1, &format!("{key}.stream_idle_timeout_ms")))
            .transpose()?;
        if preset.targets.len() > 1 {
            preset.balance = Some(Arc::new(Balance::new(preset.targets.len())));
        }
        presets.push(preset);
    }
    Ok(presets)
}

/// `sha256:<hex>` of a configuration's text and its `--listen`.
fn digest(text: &[u8], listen: Option<&str>) -> String {
    let mut all = text.to_vec();
    if let Some(l) = listen {
        all.extend_from_slice(b"\0--listen ");
        all.extend_from_slice(l.as_bytes());
    }
    format!("sha256:{}", crate::client::to_hex(&crate::client::sha256(&all)))
}

/// `[aliases.*]`: each member `<preset>/<model>` of a preset that exists.
fn build_aliases(raw: BTreeMap<String, RawAlias>, presets: &Presets) -> Result<Vec<Arc<Alias>>, ConfigError> {
    let mut aliases = Vec::new();
    for (name, a) in raw {
        let key = format!("aliases.{name}");
        if name.is_empty() || name.contains('/') || name.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'"') {
            return err(format!("{key}: an alias name has no '/', spaces or quotes"));
        }
        if a.models.is_empty() {
            return err(format!("{key}.models: name at least one \"<preset>/<model>\""));
        }
        let mut members = Vec::new();
        for m in &a.models {
            let (preset, model) = m
                .split_once('/')
                .filter(|(p, m)| !p.is_empty() && !m.is_empty())
                .ok_or_else(|| ConfigError(format!("{key}.models: \"{m}\" is not \"<preset>/<model>\"")))?;
            if presets.enabled(preset).is_none() {
                return err(format!("{key}.models: \"{m}\": no enabled preset named \"{preset}\""));
            }
            members.push(Member { preset: preset.to_owned(), model: model.to_owned() });
        }
        let strategy = match a.strategy.as_deref() {
            None => Strategy::Ordered,
            Some(s) => Strategy::parse(s).filter(|s| *s != Strategy::Weighted).ok_or_else(|| {
                ConfigError(format!("{key}.strategy must be \"ordered\", \"round-robin\" or \"p2c\""))
            })?,
        };
        let now = std::time::Instant::now();
        aliases.push(Arc::new(Alias {
            balance: Arc::new(Balance::new(members.len())),
            limits: Arc::new(RateLimits::new(a.requests_per_minute, a.tokens_per_minute, now)),
            name,
            members,
            strategy,
        }));
    }
    Ok(aliases)
}

/// A preset's `strategy`, `weights` and `retry`.
fn build_failover(
    key: &str,
    targets: usize,
    strategy: Option<String>,
    weights: Option<Vec<u32>>,
    retry: Option<RawRetry>,
) -> Result<Failover, ConfigError> {
    let mut f = Failover::default();
    if let Some(name) = strategy {
        f.strategy = Strategy::parse(&name).ok_or_else(|| {
            ConfigError(format!("{key}.strategy must be \"ordered\", \"round-robin\", \"weighted\" or \"p2c\""))
        })?;
    }
    if let Some(w) = weights {
        if w.len() != targets || w.iter().all(|&w| w == 0) {
            return err(format!("{key}.weights: one per target, not all zero"));
        }
        f.weights = w;
    }
    if let Some(r) = retry {
        let d = Retry::default();
        f.retry = Retry {
            attempts: r.attempts.unwrap_or(d.attempts),
            on: r.on.unwrap_or(d.on),
            backoff: Duration::from_millis(r.backoff_ms.unwrap_or(d.backoff.as_millis() as u64)),
        };
        if f.retry.attempts == 0 || f.retry.attempts > 10 {
            return err(format!("{key}.retry.attempts must be between 1 and 10"));
        }
        if let Some(bad) = f.retry.on.iter().find(|&&s| !(400..=599).contains(&s) || (400..429).contains(&s)) {
            return err(format!(
                "{key}.retry.on: {bad} cannot be retried (429 and 5xx only: another 4xx is the request's fault)"
            ));
        }
    }
    Ok(f)
}

/// `[egress.*]` in file order, and the same table as check-config prints
/// it (secrets written in the file masked).
fn build_exits(table: &toml::Table, env: Env<'_>) -> Result<(Vec<Arc<Exit>>, toml::Table), ConfigError> {
    let mut exits = Vec::new();
    let mut described = toml::Table::new();
    for (name, value) in table {
        let key = format!("egress.{name}");
        let ok = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok || name == "direct" {
            return err(format!("{key}: exit names must match [a-z0-9_-]+ and cannot be \"direct\""));
        }
        let raw = RawEgress::deserialize(value.clone()).map_err(|e| ConfigError(format!("{key}: {}", e.message())))?;
        let secret = |v: &Option<String>, what: &str| {
            v.as_deref().map(|v| resolve_secret(v, &format!("{key}.{what}"), env)).transpose()
        };
        let resolve = match raw.resolve.as_deref() {
            None | Some("exit") => Resolve::Exit,
            Some("local") => Resolve::Local,
            Some(_) => return err(format!("{key}.resolve must be \"exit\" or \"local\"")),
        };
        let proxy_addr = |addr: &str| -> Result<String, ConfigError> {
            let bad = || ConfigError(format!("{key}: \"{addr}\" is not host:port"));
            let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad());
            }
            Ok(addr.to_owned())
        };
        let kind = match (&raw.socks5, &raw.http_connect, &raw.bind) {
            (Some(addr), None, None) => {
                let isolate = match raw.isolate.as_deref() {
                    None | Some("none") => Isolate::None,
                    Some("client") => Isolate::Client,
                    Some("request") => Isolate::Request,
                    Some(_) => return err(format!("{key}.isolate must be \"none\", \"client\" or \"request\"")),
                };
                let credentials = match (secret(&raw.username, "username")?, secret(&raw.password, "password")?) {
                    (Some(u), Some(p)) => Some((u, p)),
                    (None, None) => None,
                    _ => return err(format!("{key}: set both username and password, or neither")),
                };
                if credentials.is_some() && isolate != Isolate::None {
                    return err(format!("{key}: isolate makes its own credentials; not together with username"));
                }
                if raw.proxy_authorization.is_some() {
                    return err(format!("{key}.proxy_authorization is for http_connect"));
                }
                ExitKind::Socks5 { proxy: proxy_addr(addr)?, credentials, isolate, resolve }
            }
            (None, Some(addr), None) => {
                if raw.username.is_some() || raw.password.is_some() || raw.isolate.is_some() {
                    return err(format!("{key}: username, password and isolate are for socks5"));
                }
                let authorization = secret(&raw.proxy_authorization, "proxy_authorization")?;
                ExitKind::HttpConnect { proxy: proxy_addr(addr)?, authorization, resolve }
            }
            (None, None, Some(source)) => {
                let source = source
                    .parse::<IpAddr>()
                    .map_err(|_| ConfigError(format!("{key}.bind: \"{source}\" is not an IP address")))?;
                if raw.username.is_some() || raw.password.is_some() || raw.proxy_authorization.is_some() {
                    return err(format!("{key}: a bind exit has no credentials"));
                }
                ExitKind::Bind { source }
            }
            _ => return err(format!("{key}: set exactly one of socks5, http_connect and bind")),
        };
        let masked = |v: &Option<String>| {
            v.as_ref()
                .map(|v| if v.starts_with("env:") || v.starts_with("file:") { v.clone() } else { "***".to_owned() })
        };
        let shown = RawEgress {
            username: masked(&raw.username),
            password: masked(&raw.password),
            proxy_authorization: masked(&raw.proxy_authorization),
            ..raw
        };
        if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&shown) {
            described.insert(name.clone(), toml::Value::Table(t));
        }
        exits.push(Arc::new(Exit::new(name.clone(), kind)));
    }
    Ok((exits, described))
}

/// `[dns]`. DoH servers are `https://` URLs. A server given by name is
/// reached at the `bootstrap` addresses — its name is never looked up —
/// or, when every exit the queries may take resolves at the exit, by name
/// through the exit; anything else could not find it and is refused.
fn build_dns(raw: RawDns, exits: &[Arc<Exit>], upstream: &Arc<ExitSet>) -> Result<DnsConfig, ConfigError> {
    let mut bootstrap = Vec::new();
    for addr in raw.bootstrap.unwrap_or_default() {
        let ip = addr.trim_matches(['[', ']']).parse::<IpAddr>();
        bootstrap.push(ip.map_err(|_| ConfigError(format!("dns.bootstrap: {addr:?} is not an IP address")))?);
    }
    let doh = match raw.resolver.as_deref() {
        None | Some("system") => false,
        Some("doh") => true,
        Some(_) => return err("dns.resolver must be \"system\" or \"doh\""),
    };
    let defaults =
        || vec!["https://1.1.1.1/dns-query".to_owned(), "https://[2606:4700:4700::1111]/dns-query".to_owned()];
    let (mut servers, mut named) = (Vec::new(), false);
    let relay = raw.relay.unwrap_or(false);
    if doh || relay {
        for url in raw.doh_servers.unwrap_or_else(defaults) {
            let (origin, path) = parse_url(&url).map_err(|e| ConfigError(format!("dns.doh_servers: {url}: {e}")))?;
            if origin.scheme != Scheme::Https {
                return err(format!("dns.doh_servers: {url}: needs https://"));
            }
            if matches!(origin.host, Host::Name(_)) && bootstrap.is_empty() {
                named = true;
            }
            servers.push(DohServer { origin, path: if path.is_empty() { "/dns-query".to_owned() } else { path } });
        }
        if servers.is_empty() {
            return err("dns.doh_servers: name at least one server");
        }
    }
    let exits = match raw.egress {
        Some(name) => exit_set(Some(&OneOrMany::One(name)), None, exits, "dns")?,
        None => Arc::clone(upstream),
    };
    let at_the_exit = |e: &Option<Arc<Exit>>| {
        e.as_ref().is_some_and(|e| {
            matches!(
                e.kind,
                ExitKind::Socks5 { resolve: Resolve::Exit, .. } | ExitKind::HttpConnect { resolve: Resolve::Exit, .. }
            )
        })
    };
    if named && !exits.exits.iter().all(at_the_exit) {
        return err(
            "dns.doh_servers: a server given by name needs dns.bootstrap (its addresses) or a dns.egress that resolves at the exit",
        );
    }
    Ok(DnsConfig {
        bootstrap,
        servers,
        resolve: doh,
        relay,
        cache_max_ttl: Duration::from_secs(raw.cache_max_ttl_s.unwrap_or(300)),
        exits,
    })
}

/// An exit set's names as the file writes them.
fn set_names(set: &ExitSet) -> OneOrMany {
    let names: Vec<String> =
        set.exits.iter().map(|e| e.as_ref().map_or_else(|| "direct".to_owned(), |e| e.name.clone())).collect();
    match <[String; 1]>::try_from(names) {
        Ok([one]) => OneOrMany::One(one),
        Err(many) => OneOrMany::Many(many),
    }
}

fn choice_name(c: ExitChoice) -> &'static str {
    match c {
        ExitChoice::PerHost => "per-host",
        ExitChoice::RoundRobin => "round-robin",
        ExitChoice::Random => "random",
    }
}

/// An `egress` list (`direct` or names of `[egress.*]`) and its
/// `exit_choice`; unset → direct.
fn exit_set(
    names: Option<&OneOrMany>,
    choice: Option<&str>,
    exits: &[Arc<Exit>],
    key: &str,
) -> Result<Arc<ExitSet>, ConfigError> {
    let choice = match choice {
        None | Some("per-host") => ExitChoice::PerHost,
        Some("round-robin") => ExitChoice::RoundRobin,
        Some("random") => ExitChoice::Random,
        Some(_) => return err(format!("{key}.exit_choice must be \"per-host\", \"round-robin\" or \"random\"")),
    };
    let names = names.map(OneOrMany::names).unwrap_or_else(|| vec!["direct".to_owned()]);
    if names.is_empty() {
        return err(format!("{key}.egress: name at least one exit (or \"direct\")"));
    }
    let mut list = Vec::new();
    for name in &names {
        if name == "direct" {
            list.push(None);
            continue;
        }
        let exit = exits.iter().find(|e| e.name == *name);
        list.push(Some(Arc::clone(exit.ok_or_else(|| ConfigError(format!("{key}.egress: no [egress.{name}]")))?)));
    }
    Ok(Arc::new(ExitSet::new(list, choice)))
}

/// What a preset's file entry and the vault say of its keys.
struct KeysSpec {
    keys: Vec<String>,
    vault_keys: Vec<String>,
    header: Option<String>,
    probe_path: Option<String>,
    probe_interval_s: Option<u64>,
}

/// A preset's keyring (SPEC §12), `None` without keys.
fn build_keyring(
    key: &str,
    spec: KeysSpec,
    protocol: Option<Protocol>,
    targets: &[Target],
    env: Env<'_>,
) -> Result<Option<Keyring>, ConfigError> {
    if spec.keys.is_empty() && spec.vault_keys.is_empty() {
        if spec.header.is_some() || spec.probe_path.is_some() || spec.probe_interval_s.is_some() {
            return err(format!("{key}: key_header, key_probe_path and key_probe_interval_s need keys"));
        }
        return Ok(None);
    }
    let header = match (spec.header.as_deref(), protocol) {
        (Some(h), _) => KeyHeader::parse(h).ok_or_else(|| {
            ConfigError(format!("{key}.key_header must be \"authorization\", \"x-api-key\" or \"x-goog-api-key\""))
        })?,
        (None, Some(Protocol::OpenAi)) => KeyHeader::Authorization,
        (None, Some(Protocol::Anthropic)) => KeyHeader::XApiKey,
        (None, Some(Protocol::Gemini)) => KeyHeader::XGoogApiKey,
        (None, None) => return err(format!("{key}: a preset with keys and protocol \"none\" must set key_header")),
    };
    let bad = |what: &str| ConfigError(format!("{key}.keys: {what} is not usable as a header value"));
    let mut keys = Vec::new();
    for (i, written) in spec.keys.iter().enumerate() {
        let secret = resolve_secret(written, &format!("{key}.keys[{i}]"), env)?;
        let source = if written.starts_with("env:") || written.starts_with("file:") {
            KeySource::Reference(written.clone())
        } else {
            KeySource::Literal
        };
        keys.push(ProviderKey::new(&secret, header, source).ok_or_else(|| bad(&format!("key {i}")))?);
    }
    for secret in &spec.vault_keys {
        keys.push(ProviderKey::new(secret, header, KeySource::Vault).ok_or_else(|| bad("a vault key"))?);
    }
    let probe_path = spec.probe_path.unwrap_or_else(|| {
        match protocol {
            Some(Protocol::Gemini) => "/v1beta/models",
            _ => "/v1/models",
        }
        .to_owned()
    });
    if !probe_path.starts_with('/') || probe_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return err(format!("{key}.key_probe_path must be a path starting with /"));
    }
    let interval = spec.probe_interval_s.unwrap_or(600);
    if interval == 0 {
        return err(format!("{key}.key_probe_interval_s must be at least 1"));
    }
    Ok(Some(Keyring::new(KeyringSpec {
        keys,
        header,
        origins: targets.iter().map(|t| t.origin.clone()).collect(),
        probe_path,
        probe_interval: Duration::from_secs(interval),
    })))
}

/// `data_dir`, else `$XDG_DATA_HOME/veilgate`, else
/// `$HOME/.local/share/veilgate`.
fn data_dir_of(data_dir: Option<&Path>, env: Env<'_>) -> Option<PathBuf> {
    match data_dir {
        Some(d) => Some(d.to_path_buf()),
        None => match (env("XDG_DATA_HOME"), env("HOME")) {
            (Some(x), _) => Some(PathBuf::from(x).join("veilgate")),
            (None, Some(h)) => Some(PathBuf::from(h).join(".local/share/veilgate")),
            (None, None) => None,
        },
    }
}

/// `[[clients]]` → [`Clients`]: a name, one of `token_sha256` or `token`
/// (a secret value: literal, `env:NAME` or `file:PATH`), presets that exist.
fn build_clients(raw: Vec<RawClient>, presets: &Presets, env: Env<'_>) -> Result<Clients, ConfigError> {
    let mut clients = Clients::default();
    for c in raw {
        let key = format!("clients.{}", c.name);
        let hash = match (c.token_sha256, c.token) {
            (Some(hex), None) => parse_sha256(&hex, &format!("{key}.token_sha256"))?,
            (None, Some(secret)) => sha256(resolve_secret(&secret, &format!("{key}.token"), env)?.as_bytes()),
            _ => return err(format!("{key}: set exactly one of token_sha256 and token")),
        };
        if let Some(list) = &c.presets
            && let Some(unknown) = list.iter().find(|p| presets.iter().all(|known| known.route != **p))
        {
            return err(format!("{key}.presets: no preset named \"{unknown}\""));
        }
        let mut client = Client::new(&c.name, hash, c.presets, c.generic.unwrap_or(false))?;
        client.limits = check_limits(c.limits, &format!("{key}.limits"))?;
        clients.push(client)?;
    }
    Ok(clients)
}

/// A secret in the configuration: `env:NAME` (the variable's value),
/// `file:PATH` (the file's content, trimmed), or the value itself. Errors
/// name the key and the variable or file, never the value.
pub(crate) fn resolve_secret(value: &str, key: &str, env: Env<'_>) -> Result<String, ConfigError> {
    let secret = if let Some(var) = value.strip_prefix("env:") {
        env(var).ok_or_else(|| ConfigError(format!("{key}: environment variable {var} is not set")))?
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{key}: cannot read {path}: {}", e.kind())))?
            .trim()
            .to_owned()
    } else {
        value.to_owned()
    };
    if secret.is_empty() {
        return err(format!("{key}: the secret is empty"));
    }
    Ok(secret)
}

fn load_or_create_token(path: &Path) -> Result<Token, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    match std::fs::read_to_string(path) {
        Ok(text) => return Token::parse(text.trim(), &format!("token file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return err(format!("cannot read token file {}: {e}", path.display())),
    }
    let token = Token::generate();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ConfigError(format!("cannot create data_dir {}: {e}", dir.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ConfigError(format!("cannot create token file {}: {e}", path.display())))?;
    file.write_all(token.expose().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|e| ConfigError(format!("cannot write token file {}: {e}", path.display())))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::from_toml(toml)?, &no_env)
    }

    fn load_env(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |k: &str| map.get(k).cloned();
        Config::from_raw(RawConfig::from_toml(toml)?, &env)
    }

    fn error_of(r: Result<Config, ConfigError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn defaults() {
        let c = Config::defaults(&no_env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(!c.preset_auth && c.aggressive_fallback && !c.force_fetch_default);
        assert_eq!(c.presets.iter().count(), BUILTIN_PRESETS.len());
        let gemini = c.presets.enabled("gemini").unwrap();
        assert_eq!(gemini.monitor, Monitor::Gemini);
        assert_eq!(c.presets.enabled("groq").unwrap().targets[0].url(), "https://api.groq.com/openai");
        assert_eq!(c.presets.enabled("openai").unwrap().monitor, Monitor::None);
        assert_eq!(c.limits.max_body_bytes, 33_554_432);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("lisen = \"127.0.0.1:1\"", "lisen"),
            ("[upstream]\nconect_timeout_ms = 5", "conect_timeout_ms"),
            ("[headers]\nallow = [\"host\"]", "headers.allow"),
            ("[headers]\nuser_agent = \"a\\nb\"", "headers.user_agent"),
            ("preset_auth = \"yes\"", "preset_auth"),
            ("listen = \"nowhere\"", "listen"),
            ("auth_token = \"short\"", "auth_token"),
            ("auth_token = \"has spaces in it, which is bad\"", "auth_token"),
            ("[limits]\nmax_header_bytes = 100", "limits.max_header_bytes"),
            ("[upstream]\nconnect_timeout_ms = 0", "upstream.connect_timeout_ms"),
            ("[presets.Bad]\ntargets = [\"https://x.org\"]", "presets.Bad"),
            ("[presets.healthz]\ntargets = [\"https://x.org\"]", "presets.healthz"),
            ("[presets.mine]\nname = \"x\"", "presets.mine.targets"),
            ("[presets.mine]\ntargets = [\"ftp://x.org\"]", "presets.mine.targets"),
            ("[presets.openai]\ntargets = []", "presets.openai.targets"),
            ("[presets.openai]\nmonitor = \"gemeni\"", "presets.openai.monitor"),
            ("[presets.openai]\ntarget = \"https://x.org\"", "target"),
            ("log_format = \"xml\"", "log_format"),
            ("cors_allow_origins = [\"*\", \"https://a.b\"]", "cors_allow_origins"),
            ("default_dst_url = \"nope\"", "default_dst_url"),
            ("[gemini.prompts]\nenglish = \"go on\"", "gemini.prompts.english"),
            ("[tls]\ncert_file = \"a\"", "key_file"),
            ("listen = \"0.0.0.0:8080\"", "danger_public_presets"),
        ];
        for (toml, key) in cases {
            let msg = error_of(load(toml));
            assert!(msg.contains(key), "error for {toml:?} should name {key}: {msg}");
        }
    }

    #[test]
    fn environment_overrides_and_names_bad_variables() {
        let c = load_env(
            "preset_auth = false\ndebug = false\nauth_token = \"from_file_token_1234\"",
            &[
                ("PRESET_AUTH_ENABLED", "TRUE"),
                ("DEBUG_MODE", "true"),
                ("AUTH_TOKEN", "from_env_token_123456"),
                ("DEFAULT_DST_URL", "http://127.0.0.1:9/x"),
                ("GEMINI_RETRY_PROMPT_CN", "继续"),
            ],
        )
        .unwrap();
        assert!(c.preset_auth && c.debug);
        assert!(c.auth_token.as_ref().unwrap().matches(b"from_env_token_123456"));
        assert_eq!(c.default_dst.1, "/x");
        assert_eq!(c.gemini.prompts.get("zh").unwrap(), "继续");
        for var in ["PRESET_AUTH_ENABLED", "AGGRESSIVE_FALLBACK", "DEBUG_MODE", "FORCE_FETCH_DEFAULT"] {
            let msg = error_of(load_env("", &[(var, "yes")]));
            assert!(msg.contains(var), "{msg}");
        }
        let msg = error_of(load_env("", &[("AUTH_TOKEN", "bad token")]));
        assert!(msg.contains("AUTH_TOKEN") && !msg.contains("bad token"), "{msg}");
    }

    #[test]
    fn exposure_rule() {
        assert!(load("listen = \"0.0.0.0:8080\"\npreset_auth = true").is_ok());
        assert!(load("listen = \"0.0.0.0:8080\"\ndanger_public_presets = true").is_ok());
        assert!(load("listen = \"[::1]:8080\"").is_ok());
        assert!(load("listen = \"192.0.2.1:8080\"").is_err());
    }

    #[test]
    fn presets_merge_field_by_field() {
        let c = load(
            "[presets.gemini]\ntargets = [\"http://127.0.0.1:9000\", \"http://127.0.0.1:9001\"]\n\
             [presets.openai]\nuser_agent = \"strip\"\n\
             [presets.claude]\nenabled = false\n\
             [presets.local-llm]\ntargets = [\"http://localhost:11434/v1/\"]\nname = \"Ollama\"\n",
        )
        .unwrap();
        let g = c.presets.enabled("gemini").unwrap();
        assert_eq!(g.display_name, "Google Gemini");
        assert_eq!(g.monitor, Monitor::Gemini, "monitor kept from the built-in");
        let urls: Vec<String> = g.targets.iter().map(Target::url).collect();
        assert_eq!(urls, ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]);
        assert!(g.balance.is_some(), "several targets have a health record");
        let o = c.presets.enabled("openai").unwrap();
        assert_eq!(o.user_agent, Some(UserAgent::Strip));
        assert_eq!(o.targets[0].url(), "https://api.openai.com", "targets kept");
        assert!(o.balance.is_none());
        assert!(c.presets.enabled("claude").is_none());
        let l = c.presets.enabled("local-llm").unwrap();
        assert_eq!((l.display_name.as_str(), l.targets[0].base_path.as_str()), ("Ollama", "/v1"));
        // The unified endpoint's path under a target (§13).
        assert_eq!(c.presets.get("gemini").unwrap().openai_path, "/v1beta/openai");
        assert_eq!(o.openai_path, "/v1");
        assert_eq!(c.presets.iter().last().unwrap().route, "local-llm");
    }

    #[test]
    fn describe_prints_every_key_as_toml_that_loads_to_the_same_config() {
        let c = load(
            "data_dir = \"/var/lib/vg\"\n[headers]\nallow = [\"x-mine\", \"x-team-*\"]\nuser_agent = \"strip\"\n\
             [presets.openai]\nuser_agent = \"pass\"\n[gemini.prompts]\nde = \"Weiter!\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"",
        )
        .unwrap();
        let text = c.describe(&no_env);
        let table: toml::Table = toml::from_str(&text).expect("valid TOML");
        for key in [
            "listen",
            "data_dir",
            "cors_allow_origins",
            "shutdown_grace_ms",
            "upstream",
            "limits",
            "headers",
            "presets",
            "gemini",
            "websocket",
            "tls",
        ] {
            assert!(table.contains_key(key), "{key} missing from:\n{text}");
        }
        for (section, key) in [
            ("upstream", "pool_idle_timeout_ms"),
            ("upstream", "idle_timeout_ms"),
            ("limits", "max_upstream_connections"),
            ("limits", "header_read_timeout_ms"),
            ("headers", "allow"),
            ("gemini", "swallow_thoughts_after_retry"),
            ("websocket", "max_message_bytes"),
        ] {
            assert!(table[section].get(key).is_some(), "{section}.{key} missing");
        }
        assert_eq!(table["presets"]["openai"]["user_agent"].as_str(), Some("pass"));
        assert_eq!(table["presets"]["claude"]["user_agent"].as_str(), Some("strip"), "the effective one");
        assert_eq!(table["gemini"]["prompts"]["de"].as_str(), Some("Weiter!"));
        let again = Config::from_raw(RawConfig::from_toml(&text).unwrap(), &no_env).unwrap();
        assert_eq!(again.describe(&no_env), text, "printing is a fixed point");
    }

    #[test]
    fn describe_prints_usage_pricing_and_limits_without_secrets() {
        let c = load(
            "[[clients]]\nname = \"alice\"\ntoken = \"alice_secret_0123456789\"\n[clients.limits]\nmonthly_cost_usd = 5.0\n\
             [auth]\njwt_hs256_secret = \"jwt_secret_0123456789\"\n[auth.jwt_limits]\nmonthly_requests = 3\n\
             [usage]\ncost_headers = \"both\"\nunpriced = \"free\"\n\
             [pricing]\n\"claude-*\" = { input = 3.0, output = 15.0, cache_read = 0.3 }\n\
             [presets.mine]\ntargets = [\"http://127.0.0.1:1\"]\nprotocol = \"anthropic\"",
        )
        .unwrap();
        let text = c.describe(&no_env);
        assert!(!text.contains("alice_secret") && !text.contains("jwt_secret"), "{text}");
        let table: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(table["clients"][0]["limits"]["monthly_cost_usd"].as_float(), Some(5.0));
        assert_eq!(table["auth"]["jwt_limits"]["monthly_requests"].as_integer(), Some(3));
        assert_eq!(table["usage"]["cost_headers"].as_str(), Some("both"));
        assert_eq!(table["usage"]["unpriced"].as_str(), Some("free"));
        assert_eq!(table["usage"]["store"].as_str(), Some("sqlite"));
        assert_eq!(table["pricing"]["claude-*"]["cached_input"].as_float(), Some(0.3));
        assert_eq!(table["presets"]["mine"]["protocol"].as_str(), Some("anthropic"));
        assert_eq!(table["presets"]["claude"]["protocol"].as_str(), Some("anthropic"));
        assert_eq!(table["presets"]["groq"]["protocol"].as_str(), Some("openai"));
        assert_eq!(table["presets"]["telegram"]["protocol"].as_str(), Some("none"));
        for (bad, named) in [
            ("[usage]\nstore = \"redis\"", "usage.store"),
            ("[usage]\ncost_headers = \"x\"", "usage.cost_headers"),
            ("[pricing]\n\"m\" = { input = -1.0 }", "pricing"),
            ("[pricing]\n\"m\" = { input = 1.0, cached_input = 1.0, cache_read = 1.0 }", "cached_input"),
            ("[presets.openai]\nprotocol = \"soap\"", "presets.openai.protocol"),
            ("[presets.usage]\ntargets = [\"http://127.0.0.1:1\"]", "reserved"),
        ] {
            assert!(error_of(load(bad)).contains(named), "{bad}: {}", error_of(load(bad)));
        }
    }

    #[test]
    fn held_keys_are_read_masked_and_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("anthropic_key");
        std::fs::write(&key_file, "sk-ant-from-a-file-0001\n").unwrap();
        let toml = format!(
            "[presets.openai]\nkeys = [\"env:OPENAI_KEY_A\", \"sk-literal-key-in-the-file-9999\"]\n\
             [presets.claude]\nkeys = [\"file:{}\"]\nkey_probe_interval_s = 5\n\
             [presets.mine]\ntargets = [\"http://127.0.0.1:1\"]\nkeys = [\"k-mine-0123456789\"]\nkey_header = \"x-api-key\"\n\
             models = [{{ id = \"m1\", usage = \"chat\", contextWindow = 1000, maxOutputTokens = 100 }}]",
            key_file.display()
        );
        let c = load_env(&toml, &[("OPENAI_KEY_A", "sk-from-the-environment-0000")]).unwrap();
        let ring = |p: &str| c.presets.enabled(p).unwrap().keys.clone().unwrap();
        assert_eq!(ring("openai").header(), KeyHeader::Authorization, "from the openai protocol");
        assert_eq!(ring("claude").header(), KeyHeader::XApiKey, "from the anthropic protocol");
        assert_eq!(ring("claude").probe_interval, Duration::from_secs(5));
        assert_eq!(ring("mine").header(), KeyHeader::XApiKey);
        assert_eq!(c.presets.enabled("mine").unwrap().models[0].context_window, Some(1000));
        assert!(c.presets.enabled("groq").unwrap().keys.is_none());

        let text = c.describe(&no_env);
        for secret in ["from-the-environment", "literal-key-in-the-file", "from-a-file", "k-mine-0123456789"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let table: toml::Table = toml::from_str(&text).expect("valid TOML");
        let keys = table["presets"]["openai"]["keys"].as_array().unwrap();
        assert_eq!(keys[0].as_str(), Some("env:OPENAI_KEY_A"), "a reference as written");
        assert_eq!(keys[1].as_str(), Some("sk-…9999"), "a literal masked");
        assert_eq!(table["presets"]["mine"]["models"][0]["maxOutputTokens"].as_integer(), Some(100));
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("presets.openai.keys[1]") && !warnings.join(" ").contains("literal-key"));

        for (bad, named) in [
            ("[presets.mine]\ntargets = [\"http://127.0.0.1:1\"]\nkeys = [\"k-0123456789\"]", "key_header"),
            ("[presets.openai]\nkeys = [\"k-0123456789\"]\nkey_header = \"cookie\"", "presets.openai.key_header"),
            ("[presets.openai]\nkeys = [\"env:NOT_SET_ANYWHERE\"]", "NOT_SET_ANYWHERE"),
            ("[presets.openai]\nkey_probe_path = \"/v1/models\"", "need keys"),
            ("[presets.openai]\nkeys = [\"k-0123456789\"]\nkey_probe_interval_s = 0", "at least 1"),
        ] {
            assert!(error_of(load(bad)).contains(named), "{bad}: {}", error_of(load(bad)));
        }
    }

    #[test]
    fn a_vault_merges_into_presets_and_a_wrong_passphrase_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let plain = br#"{"providers":{
            "groq":{"protocol":"openai","endpoint":"http://127.0.0.1:9/openai/v1","keys":[{"key":"gsk_vault_key_0001"},{"key":"gsk_gone","type":"expired"}],
                    "models":[{"id":"llama-3.1-8b-instant","contextWindow":131072}]},
            "newone":{"protocol":"anthropic","endpoint":"http://127.0.0.1:9/v1","keys":[{"key":"sk-ant-vault-0002"}]}}}"#;
        let file = dir.path().join("ai.json.enc");
        std::fs::write(&file, crate::keys::vault::encrypt(plain, b"open sesame", *b"12345678")).unwrap();
        let toml = |pass: &str| {
            format!(
                "[vault]\nfile = \"{}\"\npassphrase = \"{pass}\"\n[presets.groq]\nkeys = [\"gsk_file_key_0003\"]",
                file.display()
            )
        };
        let c = load_env(&toml("env:VAULT_PASS"), &[("VAULT_PASS", "open sesame")]).unwrap();
        let groq = c.presets.enabled("groq").unwrap();
        assert_eq!(groq.targets[0].url(), "http://127.0.0.1:9/openai");
        let ring = groq.keys.as_ref().unwrap();
        assert_eq!(ring.keys().len(), 2, "the file's key and the vault's live one");
        assert_eq!(groq.models[0].id, "llama-3.1-8b-instant");
        let newone = c.presets.enabled("newone").unwrap();
        assert_eq!(newone.protocol, Some(Protocol::Anthropic));
        assert_eq!(newone.keys.as_ref().unwrap().header(), KeyHeader::XApiKey);
        let text = c.describe(&no_env);
        assert!(
            !text.contains("gsk_vault") && !text.contains("open sesame") && !text.contains("sk-ant-vault"),
            "{text}"
        );
        assert!(text.contains("env:VAULT_PASS"));

        let wrong = error_of(load(&toml("not it")));
        assert!(wrong.contains(&file.display().to_string()) && wrong.contains("wrong passphrase"), "{wrong}");
        assert!(!wrong.contains("gsk_") && !wrong.contains("not it"), "{wrong}");
        std::fs::write(&file, "U2FsdGVkX1+garbage").unwrap();
        assert!(error_of(load(&toml("open sesame"))).contains(&file.display().to_string()));
    }

    #[test]
    fn describe_masks_the_token() {
        let c = load("auth_token = \"super_secret_token_value\"").unwrap();
        let text = c.describe(&no_env);
        assert!(!text.contains("super_secret_token_value"));
        assert!(text.contains("auth_token = \"***\""));
        assert_eq!(format!("{:?}", c.auth_token), "Some(Token(***))");
    }

    #[test]
    fn token_is_generated_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = load(&format!("data_dir = {:?}", dir.path().join("state"))).unwrap();
        let (t1, path) = c.resolve_token(&no_env).unwrap();
        let path = path.unwrap();
        assert_eq!(path, dir.path().join("state/token"));
        assert_eq!(t1.expose().len(), 43);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (t2, _) = c.resolve_token(&no_env).unwrap();
        assert_eq!(t1, t2, "reused on the next start");
        // XDG_DATA_HOME wins over HOME when data_dir is not set
        let c = load("").unwrap();
        let env = |k: &str| match k {
            "XDG_DATA_HOME" => Some("/x".to_owned()),
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        assert_eq!(c.token_path(&env).unwrap(), PathBuf::from("/x/veilgate/token"));
        let home = |k: &str| (k == "HOME").then(|| "/home/u".to_owned());
        assert_eq!(c.token_path(&home).unwrap(), PathBuf::from("/home/u/.local/share/veilgate/token"));
    }

    #[test]
    fn token_compare() {
        let t = Token::parse("abcdefghijklmnop", "t").unwrap();
        assert!(t.matches(b"abcdefghijklmnop"));
        assert!(!t.matches(b"abcdefghijklmnoq"));
        assert!(!t.matches(b"abcdefghijklmno"));
        assert!(!t.matches(b"abcdefghijklmnopq"));
        assert!(!t.matches(b""));
    }
}
