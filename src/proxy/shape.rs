//! Shaping an upstream response for the client: the policy's response
//! filter, redirects pointed back through veilgate, and the transport
//! header — one function for requests and their continuations alike.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::policy::headers::filter_response_headers;
use crate::policy::redirect::{RouteBase, rewrite_location};
use crate::policy::target::Origin;

/// How a response's redirects map back onto the route that asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Redirect {
    Preset { base_path: String, prefix: String },
    Generic { auth_prefix: String },
}

impl Redirect {
    fn base<'a>(&'a self, target: &'a Origin) -> RouteBase<'a> {
        match self {
            Redirect::Preset { base_path, prefix } => RouteBase::Preset { target, base_path, prefix },
            Redirect::Generic { auth_prefix } => RouteBase::Generic { target, auth_prefix },
        }
    }
}

/// Response headers that may point at the upstream and are rewritten.
const REDIRECT_HEADERS: [HeaderName; 2] = [header::LOCATION, HeaderName::from_static("x-goog-upload-url")];

/// Which transport answered (SPEC §7).
pub(crate) const TRANSPORT: HeaderName = HeaderName::from_static("x-veilgate-transport");

/// Points `location` and `x-goog-upload-url` back through veilgate.
fn rewrite_redirects(headers: &mut HeaderMap, base: RouteBase<'_>, public: Option<&str>) {
    for name in REDIRECT_HEADERS {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(new) = rewrite_location(value, base, public)
            && let Ok(v) = HeaderValue::from_str(&new)
        {
            headers.insert(name, v);
        }
    }
}

/// Where a response's redirects point back to: the route, the target it
/// came from, and the host the client addressed veilgate by.
pub(super) struct RedirectBack<'a> {
    pub(super) redirect: &'a Redirect,
    pub(super) target: &'a Origin,
    pub(super) public_host: Option<&'a HeaderValue>,
    pub(super) tls: bool,
}

/// Shapes the head of an upstream response for the client (pure).
pub(super) fn shape_head(headers: &mut HeaderMap, transport: &'static str, back: Option<RedirectBack<'_>>) {
    filter_response_headers(headers);
    if let Some(back) = back
        && REDIRECT_HEADERS.iter().any(|name| headers.contains_key(name))
    {
        let public = public_base(back.public_host, back.tls);
        rewrite_redirects(headers, back.redirect.base(back.target), public.as_deref());
    }
    headers.insert(TRANSPORT, HeaderValue::from_static(transport));
}

/// `http(s)://<host>` of the host the client addressed, when it said.
fn public_base(host: Option<&HeaderValue>, tls: bool) -> Option<String> {
    let host = host?.to_str().ok()?;
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}
