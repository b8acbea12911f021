//! Keeps the secrets the host put into a request out of the answer the plugin reads.
//!
//! An API that echoes its request – a redirect to the same path with a slash added, an error
//! that quotes the query, a debug endpoint that lists the headers – would otherwise hand the
//! user's token or a secret setting to the plugin, which could then send it anywhere it may
//! reach. Every spelling of a value the host revealed (as sent, percent-encoded, form-encoded,
//! JSON-escaped) is replaced by its placeholder in the answer's headers and body.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};
use memchr::memmem;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What RFC 3986 leaves unescaped; every other byte is how a server may echo a value in a URL.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The secret values revealed to one request, each spelling with the placeholder shown instead.
#[derive(Default)]
pub(super) struct Redactions {
    /// (a spelling of a secret value, its placeholder)
    spellings: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Redactions {
    /// Notes that `value` was put in the request where `placeholder` stood.
    pub(super) fn add(&mut self, value: &str, placeholder: &str) {
        if value.is_empty() {
            return;
        }
        let percent = utf8_percent_encode(value, UNRESERVED).to_string();
        let spellings = [
            value.to_owned(),
            lowercase_escapes(&percent),
            url::form_urlencoded::byte_serialize(value.as_bytes()).collect(),
            value.replace('/', "\\/"),
            percent,
        ];
        for spelling in spellings {
            let spelling = spelling.into_bytes();
            if !self.spellings.iter().any(|(known, _)| *known == spelling) {
                self.spellings
                    .push((spelling, placeholder.as_bytes().to_vec()));
            }
        }
        // Longer spellings first, so that one containing another is replaced whole.
        self.spellings
            .sort_by_key(|(spelling, _)| std::cmp::Reverse(spelling.len()));
    }

    /// Whether nothing secret went into the request.
    pub(super) fn is_empty(&self) -> bool {
        self.spellings.is_empty()
    }

    /// `bytes` with every spelling of a revealed value replaced by its placeholder.
    pub(super) fn apply<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut text = Cow::Borrowed(bytes);
        for (spelling, placeholder) in &self.spellings {
            if memmem::find(&text, spelling).is_none() {
                continue;
            }
            let mut replaced = Vec::with_capacity(text.len());
            let mut rest: &[u8] = &text;
            while let Some(at) = memmem::find(rest, spelling) {
                replaced.extend_from_slice(&rest[..at]);
                replaced.extend_from_slice(placeholder);
                rest = &rest[at + spelling.len()..];
            }
            replaced.extend_from_slice(rest);
            text = Cow::Owned(replaced);
        }
        text
    }

    /// Redacts every header value in place.
    pub(super) fn apply_to_headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if let Cow::Owned(redacted) = self.apply(value.as_bytes())
                && let Ok(redacted) = HeaderValue::from_bytes(&redacted)
            {
                *value = redacted;
            }
        }
    }
}

/// Percent-encoded text with lower-case hex digits, as some servers echo it.
fn lowercase_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactions(value: &str) -> Redactions {
        let mut redactions = Redactions::default();
        redactions.add(value, "{OAUTH_PLUGIN_ACCESS_TOKEN}");
        redactions
    }

    #[test]
    fn every_spelling_of_the_value_becomes_the_placeholder() {
        let redactions = redactions("ya29.a/b+c=");
        for echoed in [
            "GET /x/ya29.a/b+c= not found",
            "location: /x/ya29.a%2Fb%2Bc%3D/",
            "location: /x/ya29.a%2fb%2bc%3d/",
            "q=ya29.a%2Fb%2Bc%3D",
            r#"{"path": "/x/ya29.a\/b+c="}"#,
        ] {
            let redacted = redactions.apply(echoed.as_bytes());
            let redacted = String::from_utf8_lossy(&redacted);
            assert!(
                redacted.contains("{OAUTH_PLUGIN_ACCESS_TOKEN}"),
                "{echoed} -> {redacted}"
            );
            assert!(!redacted.contains("ya29.a"), "{echoed} -> {redacted}");
        }
    }

    #[test]
    fn an_answer_without_the_value_is_left_as_it_is() {
        let redactions = redactions("tok-123");
        let answer = br#"{"ok": true, "tok": 123}"#;
        assert!(matches!(redactions.apply(answer), Cow::Borrowed(_)));
    }

    #[test]
    fn every_occurrence_in_headers_is_replaced() {
        let mut redactions = redactions("tok-123");
        redactions.add("s3cret", "{SETTING:key}");
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
        let redactions = redactions("");
        assert!(redactions.is_empty());
    }
}
