//! Keeps the secrets a call holds out of the answers the plugin reads.
//!
//! An API that echoes requests – a redirect to the same path with a slash added, an error that
//! quotes the query, a debugging endpoint that lists the headers, a message stored and read back
//! later – would otherwise hand the user's token or a secret setting to the plugin, which could
//! then send it anywhere it may reach. So every answer of a call that holds a secret is read
//! whole, and every spelling of every secret of the call (as sent, percent-encoded the ways
//! common encoders do it, form-encoded, JSON- and HTML-escaped, in any letter case) is replaced
//! by its placeholder, in the headers and the body, in one pass.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What RFC 3986 leaves unescaped.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What Python's `quote` leaves unescaped by default: the unreserved set and `/`.
const PATH_SAFE: &AsciiSet = &UNRESERVED.remove(b'/');

/// What JavaScript's `encodeURIComponent` leaves unescaped.
const URI_COMPONENT: &AsciiSet = &UNRESERVED
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*');

/// The secrets of one call, each spelling with the placeholder shown instead.
#[derive(Default)]
pub(super) struct Redactions {
    spellings: Vec<Vec<u8>>,
    placeholders: Vec<Vec<u8>>,
    matcher: Option<AhoCorasick>,
}

impl Redactions {
    /// Redactions of each `(value, placeholder)`: `value` is shown as `placeholder` wherever an
    /// answer spells it.
    pub(super) fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut redactions = Self::default();
        for (value, placeholder) in secrets {
            redactions.push(value, placeholder);
        }
        redactions.build();
        redactions
    }

    /// These redactions and one more secret.
    pub(super) fn with(&self, value: &str, placeholder: &str) -> Self {
        let mut redactions = Self {
            spellings: self.spellings.clone(),
            placeholders: self.placeholders.clone(),
            matcher: None,
        };
        redactions.push(value, placeholder);
        redactions.build();
        redactions
    }

    fn push(&mut self, value: &str, placeholder: &str) {
        if value.is_empty() {
            return;
        }
        for spelling in spellings(value) {
            let spelling = spelling.into_bytes();
            if !self.spellings.contains(&spelling) {
                self.spellings.push(spelling);
                self.placeholders.push(placeholder.as_bytes().to_vec());
            }
        }
    }

    /// Leftmost-longest: where one spelling contains another, the whole one is replaced. A call
    /// without secrets, the common case, builds nothing.
    fn build(&mut self) {
        if self.spellings.is_empty() {
            self.matcher = None;
            return;
        }
        self.matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .ascii_case_insensitive(true)
            .build(&self.spellings)
            .ok();
    }

    /// Whether there is nothing to keep out.
    pub(super) fn is_empty(&self) -> bool {
        self.spellings.is_empty()
    }

    /// `bytes` with every spelling replaced by its placeholder, or `None` when none occurs.
    pub(super) fn apply(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let matcher = self.matcher.as_ref()?;
        matcher.find(bytes)?;
        Some(matcher.replace_all_bytes(bytes, &self.placeholders))
    }

    /// Redacts every header value in place; a value that would no longer be valid is dropped.
    pub(super) fn apply_to_headers(&self, headers: &mut HeaderMap) {
        let mut redacted = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            match self.apply(value.as_bytes()) {
                None => {
                    redacted.append(name.clone(), value.clone());
                }
                Some(bytes) => {
                    if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                        redacted.append(name.clone(), value);
                    }
                }
            }
        }
        *headers = redacted;
    }
}

/// The ways a server may write `value` back.
fn spellings(value: &str) -> Vec<String> {
    let html = value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json.trim_matches('"');
    vec![
        value.to_owned(),
        utf8_percent_encode(value, UNRESERVED).to_string(),
        utf8_percent_encode(value, PATH_SAFE).to_string(),
        utf8_percent_encode(value, URI_COMPONENT).to_string(),
        url::form_urlencoded::byte_serialize(value.as_bytes()).collect(),
        json.to_owned(),
        json.replace('/', "\\/"),
        html,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactions(value: &str) -> Redactions {
        Redactions::new([(value, "{OAUTH_PLUGIN_ACCESS_TOKEN}")])
    }

    fn redacted(redactions: &Redactions, text: &str) -> String {
        let bytes = redactions
            .apply(text.as_bytes())
            .unwrap_or_else(|| text.as_bytes().to_vec());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn every_spelling_of_the_value_becomes_the_placeholder() {
        let redactions = redactions("ya29.a/b+c=\"d");
        for echoed in [
            "GET /x/ya29.a/b+c=\"d not found",
            "location: /x/ya29.a%2Fb%2Bc%3D%22d/",
            "location: /x/ya29.a%2fb%2bc%3d%22d/",
            "q=ya29.a/b%2Bc%3D%22d",
            "q=ya29.a%2Fb%2Bc%3D%22d",
            r#"{"path": "/x/ya29.a\/b+c=\"d"}"#,
            r#"{"path": "/x/ya29.a/b+c=\"d"}"#,
            "<p>ya29.a/b+c=&quot;d</p>",
            "YA29.A/B+C=\"D",
        ] {
            let redacted = redacted(&redactions, echoed);
            assert!(
                redacted.contains("{OAUTH_PLUGIN_ACCESS_TOKEN}"),
                "{echoed} -> {redacted}"
            );
            assert!(
                !redacted.to_ascii_lowercase().contains("ya29.a"),
                "{echoed} -> {redacted}"
            );
        }
    }

    #[test]
    fn an_answer_without_the_value_is_left_as_it_is() {
        let redactions = redactions("tok-123");
        assert!(redactions.apply(br#"{"ok": true, "tok": 123}"#).is_none());
    }

    #[test]
    fn each_secret_is_replaced_by_its_own_placeholder_in_one_pass() {
        // A secret that is part of a placeholder is not found again in what was put in.
        let redactions = redactions("tok-123").with("PLUGIN", "{SETTING:short}");
        assert_eq!(
            redacted(&redactions, "a tok-123 b PLUGIN"),
            "a {OAUTH_PLUGIN_ACCESS_TOKEN} b {SETTING:short}"
        );
    }

    #[test]
    fn every_occurrence_in_headers_is_replaced() {
        let redactions = redactions("tok-123").with("s3cret", "{SETTING:key}");
        let mut headers = HeaderMap::new();
        headers.insert(
            "location",
            HeaderValue::from_static("/a/tok-123/b/tok-123/"),
        );
        headers.insert("x-echo", HeaderValue::from_static("key=s3cret"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));

        redactions.apply_to_headers(&mut headers);

        assert_eq!(
            headers["location"],
            "/a/{OAUTH_PLUGIN_ACCESS_TOKEN}/b/{OAUTH_PLUGIN_ACCESS_TOKEN}/"
        );
        assert_eq!(headers["x-echo"], "key={SETTING:key}");
        assert_eq!(headers["content-type"], "text/plain");
    }

    #[test]
    fn an_empty_value_redacts_nothing() {
        assert!(redactions("").is_empty());
    }
}
