//! Which transport serves a request (spec §4): the socket first; fetch
//! only when the preset or the operator forces it, when the socket failed
//! before the request was completely written, or — with
//! `aggressive_fallback` — when the socket got a Cloudflare challenge, after
//! which that origin goes straight to fetch for ten minutes.
//!
//! Nothing else is ever sent twice: a request the upstream may have acted
//! on (a head timeout, an unparsable head) is never replayed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError, failing, full};
use crate::policy::target::Origin;

use super::challenge::{HeadVerdict, MAX_CHALLENGE_BODY, head_verdict, is_challenge_page};
use super::fetch::FetchTransport;
use super::guard::Prepend;
use super::{Preference, SocketTransport, UpstreamError, UpstreamRequest};

/// How long an origin that challenged the socket goes straight to fetch.
pub(crate) const CHALLENGE_MEMORY: Duration = Duration::from_secs(600);

/// The two transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Socket,
    Fetch,
}

impl Transport {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Socket => "socket",
            Transport::Fetch => "fetch",
        }
    }
}

/// A response and the transport that got it.
pub(crate) struct Served {
    pub response: Response<Body>,
    pub transport: Transport,
    /// Why fetch was used, when it was (`force`, `connect`, `challenge`, `remembered`).
    pub fallback: Option<&'static str>,
}

/// One transport's failure, for `error.transports`.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    pub transport: Transport,
    pub error: String,
    pub duration: Duration,
}

/// Every transport failed; `error` is the last one.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: UpstreamError,
    pub attempts: Vec<Attempt>,
}

/// The transports and the rules that choose between them.
pub(crate) struct Transports {
    pub socket: SocketTransport,
    pub fetch: FetchTransport,
    pub aggressive_fallback: bool,
    challenged: Mutex<HashMap<Origin, Instant>>,
}

enum Inspected {
    Normal(Response<Body>),
    Challenge(Response<Body>),
}

impl Transports {
    pub(crate) fn new(socket: SocketTransport, fetch: FetchTransport, aggressive_fallback: bool) -> Transports {
        Transports { socket, fetch, aggressive_fallback, challenged: Mutex::new(HashMap::new()) }
    }

    /// Sends `req` through the transport its preference and the rules pick.
    ///
    /// The fetch paths are boxed: reqwest's future is ~10 KiB, and inline
    /// it would make every request's future (moved a few times per
    /// request) that large.
    pub(crate) async fn send(&self, req: &UpstreamRequest) -> Result<Served, Failure> {
        if req.transport == Preference::FetchOnly {
            return Box::pin(self.via_fetch(req, Vec::new(), "force")).await;
        }
        if self.aggressive_fallback && self.is_challenged(&req.origin) {
            return Box::pin(self.via_fetch(req, Vec::new(), "remembered")).await;
        }
        let started = Instant::now();
        let resp = match self.socket.send(req).await {
            Ok(resp) => resp,
            Err(e) if e.is_before_write() => {
                tracing::debug!(origin = %req.origin, error = %e, "socket failed before writing; trying fetch");
                let attempt = attempt(Transport::Socket, &e, started);
                return Box::pin(self.via_fetch(req, vec![attempt], "connect")).await;
            }
            Err(e) => {
                let attempts = vec![attempt(Transport::Socket, &e, started)];
                return Err(Failure { error: e, attempts });
            }
        };
        if !self.aggressive_fallback {
            return Ok(Served { response: resp, transport: Transport::Socket, fallback: None });
        }
        let challenge = match inspect(resp).await {
            Inspected::Normal(resp) => {
                return Ok(Served { response: resp, transport: Transport::Socket, fallback: None });
            }
            Inspected::Challenge(resp) => resp,
        };
        self.remember_challenge(&req.origin);
        tracing::info!(origin = %req.origin, "Cloudflare challenge on the socket; retrying with fetch");
        let started = Instant::now();
        match Box::pin(self.fetch.send(req)).await {
            Ok(resp) => Ok(served_by_fetch(inspect(resp).await, "challenge")),
            Err(e) => {
                // Fetch could not even ask: the client gets the challenge the
                // socket got, marked as such.
                tracing::debug!(error = %e, duration = ?started.elapsed(), "fetch after a challenge failed");
                Ok(Served { response: mark_challenge(challenge), transport: Transport::Socket, fallback: None })
            }
        }
    }

    async fn via_fetch(
        &self,
        req: &UpstreamRequest,
        mut attempts: Vec<Attempt>,
        reason: &'static str,
    ) -> Result<Served, Failure> {
        let started = Instant::now();
        match self.fetch.send(req).await {
            Ok(resp) => Ok(served_by_fetch(inspect(resp).await, reason)),
            Err(e) => {
                attempts.push(attempt(Transport::Fetch, &e, started));
                Err(Failure { error: e, attempts })
            }
        }
    }

    fn is_challenged(&self, origin: &Origin) -> bool {
        let mut map = self.challenged.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(origin) {
            Some(since) if since.elapsed() < CHALLENGE_MEMORY => true,
            Some(_) => {
                map.remove(origin);
                false
            }
            None => false,
        }
    }

    fn remember_challenge(&self, origin: &Origin) {
        let mut map = self.challenged.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, since| since.elapsed() < CHALLENGE_MEMORY);
        map.insert(origin.clone(), Instant::now());
    }

    /// Origins currently sent straight to fetch after a challenge.
    pub(crate) fn challenged_origins(&self) -> Vec<Origin> {
        let map = self.challenged.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().filter(|(_, since)| since.elapsed() < CHALLENGE_MEMORY).map(|(o, _)| o.clone()).collect()
    }
}

fn served_by_fetch(inspected: Inspected, reason: &'static str) -> Served {
    let response = match inspected {
        Inspected::Normal(r) => r,
        Inspected::Challenge(r) => mark_challenge(r),
    };
    Served { response, transport: Transport::Fetch, fallback: Some(reason) }
}

fn mark_challenge(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert("x-veilgate-upstream-challenge", HeaderValue::from_static("true"));
    resp
}

fn attempt(transport: Transport, e: &UpstreamError, started: Instant) -> Attempt {
    Attempt { transport, error: e.to_string(), duration: started.elapsed() }
}

/// Tells a challenge from a genuine response. Only a Cloudflare HTML
/// 403/429/503 without `cf-mitigated` has its body read (up to
/// [`MAX_CHALLENGE_BODY`]); whatever was read is put back in front.
async fn inspect(resp: Response<Body>) -> Inspected {
    match head_verdict(resp.status(), resp.headers()) {
        HeadVerdict::No => return Inspected::Normal(resp),
        HeadVerdict::Yes => return Inspected::Challenge(resp),
        HeadVerdict::ReadBody => {}
    }
    let (parts, mut body) = resp.into_parts();
    let mut seen = BytesMut::new();
    let rest: Option<Result<Body, BoxError>> = loop {
        if seen.len() >= MAX_CHALLENGE_BODY {
            break Some(Ok(body));
        }
        match body.frame().await {
            None => break None,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    seen.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => break Some(Err(e)),
        }
    };
    let is_challenge = is_challenge_page(&seen);
    let seen: Bytes = seen.freeze();
    let body = match rest {
        None => full(seen),
        Some(Ok(rest)) => Prepend::new(seen, rest).boxed_unsync(),
        // Keep the failure: a body cut short must not look complete.
        Some(Err(e)) => Prepend::new(seen, failing(e)).boxed_unsync(),
    };
    let resp = Response::from_parts(parts, body);
    if is_challenge { Inspected::Challenge(resp) } else { Inspected::Normal(resp) }
}
