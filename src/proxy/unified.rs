//! The unified endpoint (SPEC §13): `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings` and `/v1/responses` in the OpenAI
//! protocol, for any preset. The body's `model` names an alias or
//! `<preset>/<model>`; each member in turn gets the request with `model`
//! rewritten to its own (every other byte kept), sent to the preset's
//! `openai_path` with all of the preset's rules (keys, exits, targets,
//! retries, metering). An alias moves to its next member on the retry
//! conditions and on a 400 `context_length_exceeded`, never on another
//! 4xx; the answering member's response goes to the client unchanged.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::Caller;
use crate::balance::Outcome;
use crate::body::{Body, full};
use crate::config::Config;
use crate::error::Error;
use crate::monitor::stream::Elsewhere;
use crate::preset::{Alias, Member, Preset};
use crate::route::{Route, RouteError};
use crate::upstream::UpstreamRequest;
use crate::upstream::choose::{Failure, Served};
use crate::usage::count::{string_value, top_level_keys};

use super::again::{Step, decide};
use super::plan::{self, Forward, Plan, Unified};
use super::{App, Ctx, Sending, Watched, local, policy, public_host, read_body, usage};

/// The longest error body read to look for `context_length_exceeded`.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The `model` of a JSON object body, if it is a string.
pub(super) fn model_of(body: &[u8]) -> Option<String> {
    let mut model = None;
    top_level_keys(body, |key, at| {
        if key == b"model" {
            model = string_value(&body[at..]).map(|m| m.into_owned());
        }
    })?;
    model
}

/// `body` with its top-level `model` string replaced by `model`; every
/// other byte as it was.
pub(super) fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut span = None;
    top_level_keys(body, |key, at| {
        if key == b"model" && body.get(at) == Some(&b'"') {
            span = crate::usage::count::string_end(body, at + 1).map(|(end, _)| (at, end + 1));
        }
    })?;
    let (start, end) = span?;
    let quoted = serde_json::to_string(model).ok()?;
    let mut out = BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out.freeze())
}

/// The members `model` stands for: an alias's, or one `<preset>/<model>`.
fn members<'c>(config: &'c Config, model: &str) -> Option<(Option<&'c Arc<Alias>>, Vec<Member>)> {
    if let Some(alias) = config.aliases.iter().find(|a| a.name == model) {
        return Some((Some(alias), alias.members.clone()));
    }
    let (preset, id) = model.split_once('/')?;
    config.presets.enabled(preset)?;
    Some((None, vec![Member { preset: preset.to_owned(), model: id.to_owned() }]))
}

/// May `caller` send this request to `preset`? (§9; a token from the
/// API-key slot only to presets that hold keys.)
fn allowed(config: &Config, caller: &Caller, preset: &Preset, key_slot_token: bool) -> Result<(), Error> {
    let ok = match caller {
        Caller::Anonymous => !config.preset_auth && config.clients.is_empty() && preset.keys.is_none(),
        known => known.may_use_preset(&preset.route),
    };
    if !ok {
        return Err(Error::Route(if caller.is_anonymous() {
            RouteError::Unauthorized
        } else {
            RouteError::PresetNotAllowed { preset: preset.route.clone() }
        }));
    }
    if key_slot_token && preset.keys.is_none() {
        return Err(Error::Route(RouteError::PresetNotAllowed { preset: preset.route.clone() }));
    }
    Ok(())
}

/// The error code of an OpenAI-shaped error body (`error.code`).
fn is_context_length_exceeded(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.get("code")).and_then(|c| c.as_str().map(str::to_owned)))
        .is_some_and(|code| code == "context_length_exceeded")
}

impl App {
    /// `GET /v1/models`: the aliases, then `<preset>/<model>` for every
    /// model a preset the caller may use declares.
    pub(super) fn unified_models(config: &Config, caller: &Caller) -> Response<Body> {
        let mut data: Vec<serde_json::Value> =
            config.aliases.iter().map(|a| json!({ "id": a.name, "object": "model", "owned_by": "veilgate" })).collect();
        for p in config.presets.iter().filter(|p| p.enabled) {
            if allowed(config, caller, p, false).is_err() && allowed(config, caller, p, true).is_err() {
                continue;
            }
            for m in &p.models {
                data.push(json!({ "id": format!("{}/{}", p.route, m.id), "object": "model", "owned_by": p.route }));
            }
        }
        local::json_reply(&json!({ "object": "list", "data": data }))
    }

    /// One request of the unified endpoint, member by member.
    pub(super) async fn unified(
        &self,
        config: &Config,
        req: Request<Incoming>,
        u: Unified,
        cx: &mut Ctx,
    ) -> Result<Response<Body>, Error> {
        let request_path = req.uri().path().to_owned();
        let host = public_host(&req);
        let (parts, body) = req.into_parts();
        let limits = &config.limits;
        let body = read_body(body, &parts.headers, limits.max_body_bytes, limits.header_read_timeout).await?;
        let model = model_of(&body).ok_or(Error::NoModelInBody)?;
        let (alias, members) = members(config, &model).ok_or_else(|| Error::UnknownModel { model: model.clone() })?;
        let now = Instant::now();
        let order = match alias {
            Some(a) => a.balance.order(a.strategy, &[], now, rand::random::<f64>),
            None => vec![0],
        };
        let estimate = usage::estimate_tokens(&body);
        if let Some(a) = alias {
            a.limits.admit(estimate, now).map_err(|(limit, wait)| Error::RateLimited {
                what: format!("alias {}", a.name),
                limit,
                retry_after: wait.as_secs_f64().ceil() as u64,
            })?;
        }
        let mut refused: Option<Error> = None;
        for (position, &index) in order.iter().enumerate() {
            let more = position + 1 < order.len();
            let Some(member) = members.get(index) else { continue };
            let Some(preset) = config.presets.enabled(&member.preset) else { continue };
            if let Err(e) = allowed(config, &u.caller, preset, u.key_slot_token) {
                refused.get_or_insert(e);
                continue;
            }
            let Some(member_body) = with_model(&body, &member.model) else { return Err(Error::NoModelInBody) };
            let Some(mut forward) = self.member_forward(config, preset, &u, &request_path) else { continue };
            cx.preset = forward.preset.clone();
            cx.client = forward.client.clone();
            let keys = forward.keys.clone().map(|ring| (ring, preset.route.clone()));
            let redirect = forward.redirect.take();
            let again = forward.again.take();
            let mut sending = Sending { redirect, public_host: host.clone(), keys, again, elsewhere: Vec::new() };
            // A member over its preset's rate limit: the next member.
            let (mut upstream, gemini) =
                match self.build_upstream(config, &parts.method, &parts.headers, member_body, forward, cx) {
                    Ok(built) => built,
                    Err(e @ Error::RateLimited { .. }) if alias.is_some() => {
                        refused = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            let asked = Instant::now();
            let sent = self.send_again(config, &mut upstream, &mut sending, cx).await?;
            let (sent, move_on) = self.member_verdict(sent, preset, more).await;
            if let Some(a) = alias {
                let outcome = match (&sent, move_on) {
                    (_, true) => Outcome::Failed,
                    (Ok(s), _) if s.response.status().is_server_error() => Outcome::Failed,
                    _ => Outcome::Answered(asked.elapsed()),
                };
                a.balance.record(index, outcome, Instant::now(), &config.health);
            }
            if move_on {
                // Recorded as a request of this member without tokens.
                if let Some(mut meter) = cx.meter.take() {
                    meter.status = match &sent {
                        Ok(s) => s.response.status().as_u16(),
                        Err(f) => f.error.status().as_u16(),
                    };
                }
                tracing::info!(alias = model, member = member.preset, "alias member failed; trying the next");
                continue;
            }
            if gemini.as_ref().is_some_and(|w| !matches!(w, Watched::Gemini(..))) {
                // A cut stream goes on at the next members (§14).
                let later = &order[position + 1..];
                sending.elsewhere = self.elsewhere(config, &parts, later, &members, &u, &request_path);
            }
            return self.send(config, upstream, sending, gemini, cx, Some((sent, asked))).await;
        }
        Err(refused.unwrap_or(Error::UnknownModel { model }))
    }

    /// A member's request planned as a request of its preset.
    fn member_forward(
        &self,
        config: &Config,
        preset: &Arc<Preset>,
        u: &Unified,
        request_path: &str,
    ) -> Option<Forward> {
        let route = Route::Preset {
            preset: Arc::clone(preset),
            remainder: format!("{}{}", preset.openai_path, u.endpoint),
            query: u.query.clone(),
            caller: u.caller.clone(),
        };
        let settings = plan::Settings { config, token: &self.token, own: self.listen, exit: None };
        match plan::plan(route, request_path, settings) {
            Plan::Forward(forward) => Some(forward),
            _ => None,
        }
    }

    /// Where a cut stream may be continued instead (§14): the members of
    /// `later`, in order, each aimed as its preset would be (no body; its
    /// model, prefill rule and keys beside it).
    fn elsewhere(
        &self,
        config: &Config,
        parts: &http::request::Parts,
        later: &[usize],
        members: &[Member],
        u: &Unified,
        request_path: &str,
    ) -> Vec<Elsewhere> {
        let mut out = Vec::new();
        for member in later.iter().filter_map(|&i| members.get(i)) {
            let Some(preset) = config.presets.enabled(&member.preset) else { continue };
            if allowed(config, &u.caller, preset, u.key_slot_token).is_err() {
                continue;
            }
            let Some(forward) = self.member_forward(config, preset, u, request_path) else { continue };
            let headers =
                policy(config, forward.user_agent.as_ref(), forward.keys.is_some()).request_headers(&parts.headers);
            let request = UpstreamRequest {
                method: parts.method.clone(),
                origin: forward.origin,
                path: forward.path,
                headers,
                body: Bytes::new(),
                check: forward.check,
                transport: forward.transport,
                egress: forward.egress,
                credential: None,
            };
            out.push(Elsewhere { request, model: member.model.clone(), prefill: preset.prefill, keys: forward.keys });
        }
        out
    }

    /// Whether an alias goes on to its next member after this answer: on
    /// the retry conditions of the member's preset (§13), and on a 400
    /// whose error code is `context_length_exceeded` (the one 4xx another
    /// model may not have). The answer comes back whole when it stays.
    async fn member_verdict(
        &self,
        sent: Result<Served, Failure>,
        preset: &Preset,
        more: bool,
    ) -> (Result<Served, Failure>, bool) {
        if !more {
            return (sent, false);
        }
        let served = match sent {
            Ok(served) if served.response.status() == http::StatusCode::BAD_REQUEST => served,
            other => {
                // Whatever the preset's own rules would still do with this
                // answer, the alias does with its next member.
                let mut f = preset.failover.clone();
                f.retry.attempts = 1;
                let go_on = decide(&other, &f, 1, true, 0.0) == Step::Next;
                return (other, go_on);
            }
        };
        let (parts, mut body) = served.response.into_parts();
        let mut seen = BytesMut::new();
        let mut rest = None;
        loop {
            if seen.len() > MAX_ERROR_BODY {
                rest = Some(body);
                break;
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen.extend_from_slice(&data);
                    }
                }
                // Kept as it broke: a cut answer never looks complete.
                Some(Err(e)) => {
                    rest = Some(crate::body::failing(e));
                    break;
                }
                None => break,
            }
        }
        let exceeded = rest.is_none() && is_context_length_exceeded(&seen);
        let body = match rest {
            None => full(seen.freeze()),
            Some(rest) => crate::upstream::guard::Prepend::new(seen.freeze(), rest).boxed_unsync(),
        };
        let response = Response::from_parts(parts, body);
        (Ok(Served { response, transport: served.transport, fallback: served.fallback }), exceeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_read_and_rewritten_without_touching_another_byte() {
        let body = br#"{ "messages":[{"role":"user","content":"\"model\":\"x\""}], "model" : "fast","n":1}"#;
        assert_eq!(model_of(body).as_deref(), Some("fast"));
        let rewritten = with_model(body, "llama-3.3-70b").unwrap();
        assert_eq!(
            std::str::from_utf8(&rewritten).unwrap(),
            r#"{ "messages":[{"role":"user","content":"\"model\":\"x\""}], "model" : "llama-3.3-70b","n":1}"#
        );
        assert_eq!(with_model(br#"{"model":"a"}"#, "q\"uote").unwrap().as_ref(), br#"{"model":"q\"uote"}"#);
        assert_eq!(model_of(br#"{"model":5}"#), None);
        assert_eq!(model_of(b"not json"), None);
        assert!(with_model(br#"{"n":1}"#, "m").is_none());
    }

    #[test]
    fn only_context_length_exceeded_moves_on() {
        assert!(is_context_length_exceeded(br#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#));
        assert!(!is_context_length_exceeded(br#"{"error":{"code":"content_filter"}}"#));
        assert!(!is_context_length_exceeded(b"context_length_exceeded"));
    }
}
