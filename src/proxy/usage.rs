//! The usage side of a request (§11): opening the ledger, a client's
//! reservation before its request is forwarded, a JSON answer read whole so
//! its headers include it, and the `/usage` endpoints.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::App;
use super::plan::Forward;
use crate::auth::{self, Caller};
use crate::body::{Body, BoxError, Gathered, full};
use crate::config::{Config, ConfigError, CostHeaders, StoreKind};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::route::RouteError;
use crate::usage::count::Usage;
use crate::usage::ledger::{Ask, ClientMonth, Ledger, Limits, Record, Totals};
use crate::usage::meter::{self, Meter, MeterSpec, READ_WHOLE_BYTES, estimate, inspect};
use crate::usage::store::{MemoryStore, SqliteStore, Store};
use crate::usage::time::{is_month, month_of, rfc3339, seconds_until, unix_ms};

/// The ledger, when there are clients to meter: its store is opened (and
/// the data directory locked) here, so a second veilgate on the same
/// `data_dir` is refused at start.
pub(super) fn open_ledger(config: &Config, metrics: &Metrics) -> Result<Option<Ledger>, ConfigError> {
    if config.clients.is_empty() {
        return Ok(None);
    }
    let store: Box<dyn Store> = match config.usage.store {
        StoreKind::Memory => Box::new(MemoryStore::default()),
        StoreKind::Sqlite => {
            let dir = config.state_dir.as_deref().ok_or_else(|| {
                ConfigError("usage.store = \"sqlite\" needs data_dir (or XDG_DATA_HOME or HOME)".into())
            })?;
            let store = SqliteStore::open(dir, metrics.store_errors())?;
            tracing::info!(file = %store.path().display(), "usage store open");
            Box::new(store)
        }
    };
    Ok(Some(Ledger::new(store)))
}

/// A client's request: its reservation (refused → 429, or 403 for a model
/// without a price under a cost limit), and the body veilgate forwards
/// instead when it asked an OpenAI stream for usage. `None` for callers
/// that are not clients.
pub(super) fn open_meter(
    app: &App,
    config: &Config,
    forward: &Forward,
    body: &[u8],
) -> Result<Option<(Meter, Option<Bytes>)>, Error> {
    let Some(client) = &forward.account else { return Ok(None) };
    let Some(ledger) = app.ledger() else { return Ok(None) };
    let started = Instant::now();
    let protocol = forward.protocol;
    let inspected = inspect(protocol, &forward.path, body, config.usage.inject_stream_usage);
    let price = inspected.model.as_deref().and_then(|m| config.pricing.of(m));
    let limits = &client.limits;
    // A request that names a model without a price, under a cost limit (one
    // that names none — listing models, a body that is not JSON — costs
    // what its answer's model costs, if it has a price).
    if protocol.is_some()
        && limits.monthly_cost_usd.is_some()
        && inspected.model.is_some()
        && price.is_none()
        && !config.usage.unpriced_free
    {
        app.metrics.limit_refusal(&client.name, "unpriced");
        return Err(Error::Unpriced { model: shown_model(inspected.model.as_deref()) });
    }
    let now = unix_ms(SystemTime::now());
    let input = estimate(body.len() as u64);
    let output = inspected.max_output.unwrap_or(config.usage.reserve_output_tokens);
    let (reservation, before) = if limits.is_empty() {
        (None, ledger.month_totals(&client.name, now))
    } else {
        let estimate = Usage { input_tokens: input, output_tokens: output, ..Usage::default() };
        let ask = Ask { tokens: input.saturating_add(output), cost: price.map(|p| p.cost(&estimate)) };
        match ledger.reserve(&client.name, limits, ask, now) {
            Ok(r) => {
                let before = r.before;
                (Some(r), before)
            }
            Err(refusal) => {
                app.metrics.limit_refusal(&client.name, refusal.limit);
                return Err(Error::LimitReached {
                    limit: refusal.limit,
                    reset: rfc3339(refusal.reset_ms),
                    retry_after: seconds_until(refusal.reset_ms, now),
                });
            }
        }
    };
    let spec = MeterSpec {
        ledger: Arc::clone(&ledger),
        config: app.snapshot(),
        reservation,
        client: Arc::clone(&client.name),
        client_header: client.header.clone(),
        preset: forward.preset.clone(),
        protocol,
        model: inspected.model,
        price: price.copied(),
        request_bytes: body.len() as u64,
        injected: inspected.injected.is_some(),
        started,
        before,
    };
    Ok(Some((Meter::new(spec), inspected.injected)))
}

/// A model name as an error message may show it: the client's own, and
/// only when it looks like a model name.
fn shown_model(model: Option<&str>) -> String {
    match model {
        Some(m) if m.len() <= 100 && m.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b)) => {
            format!("\"{m}\"")
        }
        Some(_) => "asked for".to_owned(),
        None => "(none named)".to_owned(),
    }
}

/// A non-streaming JSON answer of known length ≤ 1 MiB is read whole
/// before it is answered.
pub(super) fn read_whole(headers: &HeaderMap) -> bool {
    let json = headers.get(header::CONTENT_TYPE).is_some_and(|v| meter::is_json(v.as_bytes()));
    let len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    json && len.is_some_and(|n| n <= READ_WHOLE_BYTES)
}

/// Reads the answer, settles, and answers with figures that include it.
/// An answer cut short is passed on as far as it came, then cut the same
/// way (never made to look complete).
pub(super) async fn answer_whole(
    mut parts: Parts,
    mut body: Body,
    mut meter: Meter,
    mode: CostHeaders,
) -> Response<Body> {
    let mut gathered = Gathered::default();
    let mut cut: Option<BoxError> = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    gathered.push(data);
                }
            }
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    let bytes = gathered.finish();
    meter.feed_json(&bytes);
    let Some(e) = cut else {
        meter.mark_ended();
        let cost = meter.settle();
        let totals = meter.totals_now();
        meter::figure_headers(&mut parts.headers, meter.client(), &totals, cost, mode);
        return Response::from_parts(parts, full(bytes));
    };
    meter.settle();
    let before = *meter.before();
    meter::figure_headers(&mut parts.headers, meter.client(), &before, None, mode);
    parts.headers.remove(header::CONTENT_LENGTH);
    let frames = futures_util::stream::iter([Ok(http_body::Frame::data(bytes)), Err(e)]);
    Response::from_parts(parts, http_body_util::StreamBody::new(frames).boxed_unsync())
}

/// The caller of a `/usage` request, refused unless it is the admin or a
/// client.
fn usage_caller(app: &App, config: &Config, req: &Request<Incoming>) -> Result<Caller, Error> {
    match auth::from_headers(req.headers(), &app.token, &config.clients) {
        Caller::Anonymous => Err(Error::Route(RouteError::Unauthorized)),
        known => Ok(known),
    }
}

/// The query of `/usage` and `/usage/requests`.
#[derive(Debug, Default)]
struct Query {
    month: Option<String>,
    client: Option<String>,
    skip: usize,
    limit: Option<usize>,
    sort: Option<String>,
}

fn parse_query(q: Option<&str>) -> Result<Query, Error> {
    let mut out = Query::default();
    let bad = |msg: &str| Error::BadQuery(msg.to_owned());
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| bad("a query value is not valid percent-encoded UTF-8"))?;
        match k {
            "month" => {
                if !is_month(&v) {
                    return Err(bad("month must be YYYY-MM"));
                }
                out.month = Some(v);
            }
            "client" => out.client = Some(v).filter(|c| !c.is_empty()),
            "skip" => out.skip = v.parse().map_err(|_| bad("skip must be a number"))?,
            "limit" => out.limit = Some(v.parse().map_err(|_| bad("limit must be a number"))?),
            "sort" => {
                if !matches!(v.as_str(), "requests" | "tokens" | "cost") {
                    return Err(bad("sort must be requests, tokens or cost"));
                }
                out.sort = Some(v);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Which client's figures a caller may read: a client its own only.
fn scope(caller: &Caller, asked: Option<String>) -> Result<Option<String>, Error> {
    match caller {
        Caller::Client(c) => match asked {
            Some(other) if *other != *c.name => {
                Err(Error::Route(RouteError::PresetNotAllowed { preset: "usage of another client".into() }))
            }
            _ => Ok(Some(c.name.to_string())),
        },
        _ => Ok(asked),
    }
}

fn json_response(v: &Value) -> Response<Body> {
    let mut resp = Response::new(full(v.to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn totals_json(t: &Totals) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("requests".into(), t.requests.into());
    m.insert("input_tokens".into(), t.input_tokens.into());
    m.insert("output_tokens".into(), t.output_tokens.into());
    m.insert("cached_tokens".into(), t.cached_tokens.into());
    m.insert("cache_write_tokens".into(), t.cache_write_tokens.into());
    m.insert("cost_usd".into(), t.cost_usd.into());
    m
}

/// `GET /usage`: a client's own month, or (admin) everyone's.
pub(super) fn report(app: &App, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    let caller = usage_caller(app, config, req)?;
    let q = parse_query(req.uri().query())?;
    let now = unix_ms(SystemTime::now());
    let month = q.month.clone().unwrap_or_else(|| month_of(now));
    let only = scope(&caller, q.client.clone())?;
    let mut rows: Vec<(Arc<str>, ClientMonth)> = match app.ledger() {
        Some(ledger) => ledger.month(&month, only.as_deref()),
        None => Vec::new(),
    };
    // Configured clients without usage this month are listed too.
    for c in config.clients.iter() {
        if only.as_deref().is_none_or(|o| o == &*c.name) && !rows.iter().any(|(n, _)| *n == c.name) {
            rows.push((Arc::clone(&c.name), ClientMonth::default()));
        }
    }
    if let (Some(o), Caller::Client(c)) = (&only, &caller)
        && rows.is_empty()
        && **o == *c.name
    {
        rows.push((Arc::clone(&c.name), ClientMonth::default()));
    }
    match q.sort.as_deref() {
        Some("requests") => rows.sort_by(|a, b| b.1.totals.requests.cmp(&a.1.totals.requests).then(a.0.cmp(&b.0))),
        Some("tokens") => rows.sort_by(|a, b| b.1.totals.tokens().cmp(&a.1.totals.tokens()).then(a.0.cmp(&b.0))),
        Some("cost") => rows.sort_by(|a, b| b.1.totals.cost_usd.total_cmp(&a.1.totals.cost_usd).then(a.0.cmp(&b.0))),
        _ => rows.sort_by(|a, b| a.0.cmp(&b.0)),
    }
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let data: Vec<Value> = rows
        .iter()
        .skip(q.skip)
        .take(limit)
        .map(|(name, cm)| {
            let mut entry = serde_json::Map::new();
            entry.insert("client".into(), Value::from(&**name));
            entry.extend(totals_json(&cm.totals));
            entry.insert("estimated_requests".into(), cm.totals.estimated_requests.into());
            entry.insert("limits".into(), limits_json(config, &caller, name));
            entry.insert("by_model".into(), breakdown("model", &cm.by_model));
            entry.insert("by_day".into(), breakdown("day", &cm.by_day));
            Value::Object(entry)
        })
        .collect();
    Ok(json_response(&json!({ "month": month, "data": data })))
}

/// `[{<key>: name, requests, …}]` of a month's figures by model or by day.
fn breakdown(key: &str, figures: &std::collections::BTreeMap<String, Totals>) -> Value {
    let rows = figures.iter().map(|(name, t)| {
        let mut m = totals_json(t);
        m.insert(key.to_owned(), Value::from(name.as_str()));
        Value::Object(m)
    });
    Value::Array(rows.collect())
}

/// A client's limits as configured (JWT clients: `[auth.jwt_limits]`).
fn limits_json(config: &Config, caller: &Caller, name: &str) -> Value {
    let limits: Limits = match config.clients.iter().find(|c| &*c.name == name) {
        Some(c) => c.limits,
        None => match caller {
            Caller::Client(c) if &*c.name == name => c.limits,
            _ if config.clients.accepts_jwts() => *config.clients.jwt_limits(),
            _ => Limits::default(),
        },
    };
    serde_json::to_value(limits).unwrap_or_else(|_| json!({}))
}

/// `GET /usage/requests`: single requests, newest first.
pub(super) async fn requests(app: &App, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    let caller = usage_caller(app, config, req)?;
    let q = parse_query(req.uri().query())?;
    let only = scope(&caller, q.client)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let records: Vec<Record> = match app.ledger() {
        Some(ledger) => {
            // Everything settled before this request is listed.
            tokio::task::spawn_blocking(move || {
                ledger.store().flush();
                ledger.store().recent(only.as_deref(), limit)
            })
            .await
            .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let data: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "time": rfc3339(r.time_ms),
                "client": &*r.client,
                "preset": r.preset,
                "model": r.model,
                "status": r.status,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cached_tokens": r.cached_tokens,
                "cache_write_tokens": r.cache_write_tokens,
                "cost_usd": r.cost_usd,
                "estimated": r.estimated,
                "attempts": r.attempts,
                "duration_ms": r.duration_ms,
            })
        })
        .collect();
    Ok(json_response(&json!({ "data": data })))
}

/// A request's tokens as rate limits count them before it is sent (§13):
/// its input estimated from its size, plus the most output it asks for.
pub(super) fn estimate_tokens(body: &[u8]) -> u64 {
    let asked = inspect(Some(crate::usage::count::Protocol::OpenAi), "", body, false).max_output.unwrap_or(0);
    estimate(body.len() as u64).saturating_add(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query(Some("month=2026-11&client=alice%40team&skip=2&limit=5&sort=cost")).unwrap();
        assert_eq!(q.month.as_deref(), Some("2026-11"));
        assert_eq!(q.client.as_deref(), Some("alice@team"));
        assert_eq!((q.skip, q.limit, q.sort.as_deref()), (2, Some(5), Some("cost")));
        for bad in ["month=2026-13", "skip=-1", "limit=x", "sort=name", "client=%zz"] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_query(None).is_ok());
    }

    #[test]
    fn models_in_messages() {
        assert_eq!(shown_model(Some("gpt-4o-mini")), "\"gpt-4o-mini\"");
        assert_eq!(shown_model(Some("a\"b")), "asked for");
        assert_eq!(shown_model(None), "(none named)");
    }
}
