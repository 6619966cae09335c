//! `[pricing]`: USD per million tokens by model name. An exact key wins,
//! else the longest matching glob (`*` matches any run of characters), so
//! `gpt-4o-mini*` also prices dated snapshots.

use super::count::Usage;

/// The rates of one model, USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cache reads (`cached_input` or `cache_read`); the input rate if unset.
    pub cache_read: f64,
    /// Cache writes; the input rate if unset.
    pub cache_write: f64,
}

impl Price {
    /// The cost of `usage`: fresh input, cache reads, cache writes and
    /// output each at their own rate.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let fresh = usage.input_tokens.saturating_sub(usage.cached_tokens + usage.cache_write_tokens);
        (fresh as f64 * self.input
            + usage.cached_tokens as f64 * self.cache_read
            + usage.cache_write_tokens as f64 * self.cache_write
            + usage.output_tokens as f64 * self.output)
            / 1e6
    }
}

/// Every configured price.
#[derive(Debug, Default)]
pub struct Pricing {
    exact: Vec<(String, Price)>,
    /// Globs, longest first.
    globs: Vec<(String, Price)>,
}

impl Pricing {
    pub fn new(entries: impl IntoIterator<Item = (String, Price)>) -> Pricing {
        let (mut globs, exact): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| k.contains('*'));
        globs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Pricing { exact, globs }
    }

    /// Every price, exact keys first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.exact.iter().chain(&self.globs).map(|(k, p)| (k.as_str(), p))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// The price of `model`, if one is configured.
    pub fn of(&self, model: &str) -> Option<&Price> {
        if let Some((_, p)) = self.exact.iter().find(|(k, _)| k == model) {
            return Some(p);
        }
        self.globs.iter().find(|(k, _)| glob(k.as_bytes(), model.as_bytes())).map(|(_, p)| p)
    }
}

/// `*`-only glob match, iterative with one backtrack point.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64) -> Price {
        Price { input, output: input * 4.0, cache_read: input / 2.0, cache_write: input * 1.25 }
    }

    #[test]
    fn exact_then_longest_glob() {
        let p = Pricing::new([
            ("gpt-4o-mini".to_owned(), price(0.15)),
            ("gpt-4o*".to_owned(), price(2.5)),
            ("gpt-4o-mini*".to_owned(), price(0.2)),
            ("claude-*".to_owned(), price(3.0)),
        ]);
        assert_eq!(p.of("gpt-4o-mini").unwrap().input, 0.15);
        assert_eq!(p.of("gpt-4o-mini-2024-07-18").unwrap().input, 0.2);
        assert_eq!(p.of("gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert_eq!(p.of("claude-sonnet-4-5").unwrap().input, 3.0);
        assert!(p.of("gemini-2.5-flash").is_none());
        assert!(p.of("gpt-4").is_none());
    }

    #[test]
    fn globs() {
        for (pat, text, ok) in [
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbb", false),
            ("*-mini*", "gpt-4o-mini-x", true),
            ("a**b", "ab", true),
            ("abc", "abc", true),
            ("abc", "abcd", false),
        ] {
            assert_eq!(glob(pat.as_bytes(), text.as_bytes()), ok, "{pat} {text}");
        }
    }

    #[test]
    fn each_kind_at_its_rate() {
        let p = Price { input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75 };
        let u = Usage {
            input_tokens: 1_000_000 + 2_000_000 + 4_000_000,
            output_tokens: 1_000_000,
            cached_tokens: 2_000_000,
            cache_write_tokens: 4_000_000,
            model: None,
        };
        let want = 3.0 + 2.0 * 0.3 + 4.0 * 3.75 + 15.0;
        assert!((p.cost(&u) - want).abs() < 1e-9, "{}", p.cost(&u));
    }
}
