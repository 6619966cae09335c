//! Redirects are not followed, but a `location` (or Gemini's
//! `x-goog-upload-url`) that points at the request's own target is
//! rewritten to the matching veilgate route, so the client does not go
//! around the proxy; in generic mode any absolute http(s) URL becomes a
//! generic route. Pure string work.

use crate::policy::target::{Origin, parse_url};

/// The route a response belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RouteBase<'a> {
    /// `{prefix}{rest}` serves `target` + `base_path` + `rest`.
    Preset { target: &'a Origin, base_path: &'a str, prefix: &'a str },
    /// `{auth_prefix}/{scheme}/{host[:port]}{path}` serves any URL.
    Generic { target: &'a Origin, auth_prefix: &'a str },
}

/// The rewritten value, or `None` to leave it as it is. `public` is how the
/// client reached veilgate (`http://127.0.0.1:8080`); without it the result
/// is an absolute path.
pub(crate) fn rewrite_location(value: &str, base: RouteBase<'_>, public: Option<&str>) -> Option<String> {
    let target = match base {
        RouteBase::Preset { target, .. } | RouteBase::Generic { target, .. } => target,
    };
    let lower = value.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let (origin, path) = if lower.starts_with("http://") || lower.starts_with("https://") {
        parse_url(value).ok()?
    } else if value.starts_with("//") {
        parse_url(&format!("{}:{value}", target.scheme.as_str())).ok()?
    } else if value.starts_with('/') {
        (target.clone(), value.to_owned())
    } else {
        return None; // relative to the current path: resolves through veilgate already
    };
    let path = match base {
        RouteBase::Preset { base_path, prefix, .. } => {
            if origin != *target {
                return None;
            }
            let rest = path.strip_prefix(base_path)?;
            if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
                return None; // outside the preset's path
            }
            let rest = if rest.is_empty() || rest.starts_with('?') { format!("/{rest}") } else { rest.to_owned() };
            format!("{prefix}{rest}")
        }
        RouteBase::Generic { auth_prefix, .. } => {
            let path = if path.is_empty() || path.starts_with('?') { format!("/{path}") } else { path };
            format!("{auth_prefix}/{}/{}{path}", origin.scheme.as_str(), origin.host_header())
        }
    };
    Some(match public {
        Some(p) => format!("{p}{path}"),
        None => path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        parse_url(url).unwrap().0
    }

    #[test]
    fn preset_locations() {
        let target = origin("https://api.groq.com");
        let base = RouteBase::Preset { target: &target, base_path: "/openai", prefix: "/groq" };
        let public = Some("http://127.0.0.1:8080");
        let cases: &[(&str, Option<&str>)] = &[
            ("https://api.groq.com/openai/v1/files/1", Some("http://127.0.0.1:8080/groq/v1/files/1")),
            ("https://API.groq.com:443/openai/v1?x=1", Some("http://127.0.0.1:8080/groq/v1?x=1")),
            ("/openai/v1/x", Some("http://127.0.0.1:8080/groq/v1/x")),
            ("//api.groq.com/openai/v1", Some("http://127.0.0.1:8080/groq/v1")),
            ("https://api.groq.com/openai", Some("http://127.0.0.1:8080/groq/")),
            ("https://api.groq.com/openai?page=2", Some("http://127.0.0.1:8080/groq/?page=2")),
            ("https://api.groq.com/openaiX/v1", None),
            ("https://api.groq.com/other", None),
            ("http://api.groq.com/openai/v1", None),
            ("https://elsewhere.example/openai/v1", None),
            ("v1/relative", None),
            ("not a url", None),
        ];
        for (input, want) in cases {
            assert_eq!(rewrite_location(input, base, public).as_deref(), *want, "{input}");
        }
        let with_token = RouteBase::Preset { target: &target, base_path: "/openai", prefix: "/tok_tok_tok_tok_1/groq" };
        assert_eq!(
            rewrite_location("https://api.groq.com/openai/v1", with_token, None).as_deref(),
            Some("/tok_tok_tok_tok_1/groq/v1")
        );
    }

    #[test]
    fn generic_locations() {
        let target = origin("https://api.example.com");
        let base = RouteBase::Generic { target: &target, auth_prefix: "/tok_tok_tok_tok_1" };
        let cases: &[(&str, Option<&str>)] = &[
            ("https://cdn.example.net/a?b=1", Some("/tok_tok_tok_tok_1/https/cdn.example.net/a?b=1")),
            ("http://other.example:8080", Some("/tok_tok_tok_tok_1/http/other.example:8080/")),
            ("/moved", Some("/tok_tok_tok_tok_1/https/api.example.com/moved")),
            ("ftp://files.example/x", None),
            ("relative/path", None),
        ];
        for (input, want) in cases {
            assert_eq!(rewrite_location(input, base, None).as_deref(), *want, "{input}");
        }
        let header_auth = RouteBase::Generic { target: &target, auth_prefix: "" };
        assert_eq!(
            rewrite_location("https://a.example/x", header_auth, Some("http://localhost:8080")).as_deref(),
            Some("http://localhost:8080/https/a.example/x")
        );
    }
}
