//! Phase 5 for a preset with several targets or retries (SPEC §13): the
//! request goes to its targets in the planned order, again on the same one
//! for a status in `retry.on` (with backoff, or the answer's `retry-after`
//! up to 30 s), to the next on a connection failure, and never again once
//! it was written and no answer came — unless the operator opted in with
//! `retry_unanswered`, and then only to another target. Nothing of a
//! failed attempt reaches the client; the last one does, as it came.

use std::time::{Duration, Instant, SystemTime};

use crate::balance::{Failover, Outcome};
use crate::config::Config;
use crate::error::Error;
use crate::keys::reset::retry_after_of;
use crate::upstream::choose::{Attempt, Failure, Served, Transport};
use crate::upstream::guard::Prepend;
use crate::upstream::{UpstreamError, UpstreamRequest};
use http_body_util::BodyExt;

use super::shape::Redirect;
use super::{App, Ctx, Sending};

/// What follows one attempt.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// This is the answer the client gets.
    Done,
    /// The same target again after this wait.
    Same(Duration),
    /// The next target, at once.
    Next,
}

/// The rules of §13 "retrying safely", for attempt `n` (from 1) on a
/// target, with or without a target after it. `jitter` is in 0..1.
pub(super) fn decide(sent: &Result<Served, Failure>, f: &Failover, n: u32, more: bool, jitter: f64) -> Step {
    let retried = n < f.retry.attempts;
    match sent {
        Ok(served) => {
            if !f.retry.on.contains(&served.response.status().as_u16()) {
                return Step::Done;
            }
            if retried {
                let after = retry_after_of(served.response.headers(), SystemTime::now());
                return Step::Same(f.retry.wait(n, after, jitter));
            }
            if more { Step::Next } else { Step::Done }
        }
        // Nothing reached the provider: the next target, or this one again
        // when it is the only one.
        Err(failure) if failure.error.is_before_write() && !is_ours(&failure.error) => {
            if more {
                Step::Next
            } else if retried {
                Step::Same(f.retry.wait(n, None, jitter))
            } else {
                Step::Done
            }
        }
        // Written and not answered: the provider may be working (and
        // billing); only with the operator's opt-in, never the same target.
        Err(failure) if is_unanswered(&failure.error) && f.retry_unanswered && more => Step::Next,
        // The operator's opt-in by setting the timeout: another target.
        Err(failure) if matches!(failure.error, UpstreamError::FirstToken { .. }) && more => Step::Next,
        Err(_) => Step::Done,
    }
}

/// A failure on veilgate's side, not the target's: an exit, the target
/// check, a full pool. It is answered as it is, and says nothing of the
/// target's health.
fn is_ours(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Egress { .. } | UpstreamError::Forbidden { .. } | UpstreamError::Saturated { .. })
}

fn is_unanswered(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::HeadTimeout { .. } | UpstreamError::Closed { .. } | UpstreamError::Read { .. })
}

/// What an attempt says of its target's health (§13: a 429 is not a
/// failure; connection failures, timeouts and 5xx are).
fn outcome(sent: &Result<Served, Failure>, took: Duration) -> Outcome {
    match sent {
        Ok(served) => match served.response.status().as_u16() {
            429 => Outcome::Neutral,
            500..=599 => Outcome::Failed,
            _ => Outcome::Answered(took),
        },
        Err(failure) if is_ours(&failure.error) => Outcome::Neutral,
        Err(_) => Outcome::Failed,
    }
}

impl App {
    /// Sends `req` by the rules above when the plan kept a way to go
    /// again; once otherwise. `req` ends aimed at the target that answered.
    pub(super) async fn send_again(
        &self,
        config: &Config,
        req: &mut UpstreamRequest,
        sending: &mut Sending,
        cx: &mut Ctx,
    ) -> Result<Result<Served, Failure>, Error> {
        let Some(again) = sending.again.take() else { return self.send_once(req, sending, cx).await };
        let f = &again.preset.failover;
        let balance = again.preset.balance.as_deref();
        let mut attempts = 0u32;
        for (position, &index) in again.order.iter().enumerate() {
            if position > 0 {
                let Some(aimed) = again.aim(index, config) else { continue };
                (req.origin, req.path, req.egress) = (aimed.origin, aimed.path, aimed.egress);
                if let Some(Redirect::Preset { base_path, .. }) = &mut sending.redirect {
                    *base_path = aimed.base_path;
                }
                // A held key is bound to the origin it was picked for.
                req.credential = None;
            }
            let more = position + 1 < again.order.len();
            let mut n = 0;
            loop {
                n += 1;
                attempts += 1;
                if let Some(b) = balance {
                    b.started(index);
                }
                let started = Instant::now();
                let sent = match f.first_token_timeout {
                    None => self.send_once(req, sending, cx).await,
                    Some(limit) => self.send_first_event(req, sending, cx, limit).await,
                };
                let sent = match sent {
                    Ok(sent) => sent,
                    Err(e) => {
                        // No key to send with: nothing was sent.
                        if let Some(b) = balance {
                            b.record(index, Outcome::Neutral, Instant::now(), &config.health);
                        }
                        return Err(e);
                    }
                };
                if let Some(b) = balance {
                    b.record(index, outcome(&sent, started.elapsed()), Instant::now(), &config.health);
                }
                if let Some(meter) = &mut cx.meter {
                    meter.attempts = attempts;
                }
                let step = decide(&sent, f, n, more, rand::random::<f64>());
                tracing::debug!(preset = again.preset.route, target = index, attempt = n, ?step, "attempt ended");
                if step != Step::Done
                    && let Some(meter) = &cx.meter
                {
                    let status = match &sent {
                        Ok(served) => served.response.status().as_u16(),
                        Err(failure) => failure.error.status().as_u16(),
                    };
                    meter.record_failed_attempt(status, started.elapsed());
                }
                match step {
                    Step::Done => return Ok(sent),
                    Step::Same(wait) => {
                        drop(sent);
                        tokio::time::sleep(wait).await;
                    }
                    Step::Next => break,
                }
            }
        }
        // Only when no target could be aimed at (never with a valid plan).
        self.send_once(req, sending, cx).await
    }

    /// One attempt whose stream must show its first event within `limit`
    /// of being sent (the head included); the events read meanwhile are put
    /// back in front. Anything but a 200 event stream is passed as it is.
    async fn send_first_event(
        &self,
        req: &mut UpstreamRequest,
        sending: &Sending,
        cx: &mut Ctx,
        limit: Duration,
    ) -> Result<Result<Served, Failure>, Error> {
        let host = req.origin.host.to_string();
        let attempt = async {
            let served = match self.send_once(req, sending, cx).await? {
                Ok(served) => served,
                failed => return Ok(failed),
            };
            if !crate::monitor::stream::is_event_stream(served.response.status(), served.response.headers()) {
                return Ok(Ok(served));
            }
            let (parts, mut body) = served.response.into_parts();
            let mut seen = bytes::BytesMut::new();
            let rest = loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            seen.extend_from_slice(&data);
                        }
                        if seen.windows(5).any(|w| w == b"data:") {
                            break Some(body);
                        }
                    }
                    // The stream ended or broke before an event: passed on
                    // as it is (a break stays a break).
                    Some(Err(e)) => break Some(crate::body::failing(e)),
                    None => break None,
                }
            };
            let seen = seen.freeze();
            let body = match rest {
                Some(rest) => Prepend::new(seen, rest).boxed_unsync(),
                None => crate::body::full(seen),
            };
            let response = http::Response::from_parts(parts, body);
            Ok(Ok(Served { response, transport: served.transport, fallback: served.fallback }))
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => {
                let ms = limit.as_millis() as u64;
                let error = UpstreamError::FirstToken { host, ms };
                let attempts =
                    vec![Attempt { transport: Transport::Socket, error: error.to_string(), duration: limit }];
                Ok(Err(Failure { error, attempts }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Retry;
    use crate::body::full;
    use bytes::Bytes;

    fn answer(status: u16, retry_after: Option<&str>) -> Result<Served, Failure> {
        let mut response = http::Response::new(full(Bytes::new()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if let Some(v) = retry_after {
            response.headers_mut().insert("retry-after", v.parse().unwrap());
        }
        Ok(Served { response, transport: Transport::Socket, fallback: None })
    }

    fn failed(error: UpstreamError) -> Result<Served, Failure> {
        let attempts =
            vec![Attempt { transport: Transport::Socket, error: error.to_string(), duration: Duration::ZERO }];
        Err(Failure { error, attempts })
    }

    fn policy(attempts: u32, unanswered: bool) -> Failover {
        Failover {
            retry: Retry { attempts, on: vec![429, 503], backoff: Duration::from_millis(100) },
            retry_unanswered: unanswered,
            ..Failover::default()
        }
    }

    #[test]
    fn statuses_in_retry_on_go_again_on_the_same_target_then_the_next() {
        let f = policy(3, false);
        assert_eq!(decide(&answer(503, None), &f, 1, true, 1.0), Step::Same(Duration::from_millis(100)));
        assert_eq!(decide(&answer(429, Some("2")), &f, 2, true, 1.0), Step::Same(Duration::from_secs(2)));
        assert_eq!(decide(&answer(503, None), &f, 3, true, 1.0), Step::Next, "attempts used up");
        assert_eq!(decide(&answer(503, None), &f, 3, false, 1.0), Step::Done, "the last failure as it came");
        for other in [200, 400, 401, 404, 500] {
            assert_eq!(decide(&answer(other, None), &f, 1, true, 1.0), Step::Done, "{other} is not in retry.on");
        }
    }

    #[test]
    fn connection_failures_move_on_and_unanswered_requests_only_by_opt_in() {
        let refused = || failed(UpstreamError::Connect { host: "h".into(), reason: "refused".into() });
        let f = policy(2, false);
        assert_eq!(decide(&refused(), &f, 1, true, 1.0), Step::Next);
        assert_eq!(decide(&refused(), &f, 1, false, 1.0), Step::Same(Duration::from_millis(100)), "only target");
        assert_eq!(decide(&refused(), &f, 2, false, 1.0), Step::Done);
        let silent = || failed(UpstreamError::HeadTimeout { host: "h".into(), secs: 1 });
        let reset = || failed(UpstreamError::Closed { host: "h".into() });
        assert_eq!(decide(&silent(), &f, 1, true, 1.0), Step::Done, "may have been billed");
        assert_eq!(decide(&reset(), &f, 1, true, 1.0), Step::Done);
        let opted = policy(2, true);
        assert_eq!(decide(&silent(), &opted, 1, true, 1.0), Step::Next);
        assert_eq!(decide(&silent(), &opted, 1, false, 1.0), Step::Done, "never the same target");
        let exit = failed(UpstreamError::Egress { egress: "tor".into(), reason: "refused".into() });
        assert_eq!(decide(&exit, &f, 1, true, 1.0), Step::Done, "an exit's failure is never retried around");
    }
}
