//! Recognising a Cloudflare bot challenge (as opposed to a genuine error
//! from an API behind Cloudflare): pure functions on the response.

use http::{HeaderMap, StatusCode, header};

/// Most body bytes read to look for a challenge page.
pub(crate) const MAX_CHALLENGE_BODY: usize = 64 * 1024;

/// What the head alone says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadVerdict {
    /// Not a challenge.
    No,
    /// `cf-mitigated: challenge`: a challenge, no need to read the body.
    Yes,
    /// `server: cloudflare` with an HTML error: the body decides.
    ReadBody,
}

/// Classifies a response head: only 403, 429 and 503 can be challenges.
pub(crate) fn head_verdict(status: StatusCode, headers: &HeaderMap) -> HeadVerdict {
    if !matches!(status.as_u16(), 403 | 429 | 503) {
        return HeadVerdict::No;
    }
    let has = |name: &str, want: &str| {
        headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case(want)))
    };
    if has("cf-mitigated", "challenge") {
        return HeadVerdict::Yes;
    }
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
    if has("server", "cloudflare") && is_html {
        return HeadVerdict::ReadBody;
    }
    HeadVerdict::No
}

/// True when an HTML body is Cloudflare's interstitial ("Just a moment...",
/// the challenge platform script), not an ordinary error page.
pub(crate) fn is_challenge_page(body: &[u8]) -> bool {
    const MARKERS: &[&[u8]] = &[
        b"/cdn-cgi/challenge-platform/",
        b"_cf_chl_opt",
        b"<title>Just a moment...</title>",
        b"cf-browser-verification",
    ];
    MARKERS.iter().any(|m| body.windows(m.len()).any(|w| w == *m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn verdicts() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        let mitigated = headers(&[("cf-mitigated", "challenge"), ("server", "cloudflare")]);
        assert_eq!(head_verdict(s(403), &mitigated), HeadVerdict::Yes);
        assert_eq!(head_verdict(s(503), &mitigated), HeadVerdict::Yes);
        assert_eq!(head_verdict(s(200), &mitigated), HeadVerdict::No, "only 403/429/503");
        let html = headers(&[("server", "cloudflare"), ("content-type", "text/html; charset=UTF-8")]);
        assert_eq!(head_verdict(s(429), &html), HeadVerdict::ReadBody);
        let json = headers(&[("server", "cloudflare"), ("content-type", "application/json")]);
        assert_eq!(head_verdict(s(429), &json), HeadVerdict::No, "a genuine rate limit");
        let nginx_html = headers(&[("server", "nginx"), ("content-type", "text/html")]);
        assert_eq!(head_verdict(s(403), &nginx_html), HeadVerdict::No);
    }

    #[test]
    fn pages() {
        let page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>\
            <script src=\"/cdn-cgi/challenge-platform/h/b/orchestrate/chl_page/v1\"></script></body></html>";
        assert!(is_challenge_page(page));
        assert!(!is_challenge_page(b"<html><body><h1>403 Forbidden</h1>cloudflare</body></html>"));
    }
}
