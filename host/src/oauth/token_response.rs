//! Reading a token endpoint's answer to a code exchange or a refresh (RFC 6749 §5).
//!
//! Providers depart from §5 in ways a strict parser would turn into failed sign-ins, so this one
//! is tolerant where it is safe to be:
//! - the body may be JSON or form-encoded (GitHub answers `access_token=…&scope=…` unless asked
//!   for JSON), and the content type is only a hint;
//! - an error may come with HTTP 200 (GitHub, and Slack's `"ok": false`), not only with 400;
//! - `expires_in` may be a string, and Slack's token types are `bot` and `user`;
//! - the token fields may sit below the top level (`token_path`, Slack's `/authed_user`).
//!
//! It is strict where tolerance would be unsafe: an answer without an access token, or with a
//! token scheme other than bearer, is refused. No error it returns quotes a token or the body.

use std::fmt;

use serde_json::{Map, Value};

/// How many characters of a provider's error text are kept; enough to explain, too few to
/// flood a log line.
const MAX_PROVIDER_TEXT: usize = 200;

/// Error codes that mean the code or refresh token is spent: RFC 6749's `invalid_grant`, and
/// the names Slack and GitHub use for the same thing.
const INVALID_GRANT_CODES: &[&str] = &[
    "invalid_grant",
    "invalid_refresh_token",
    "invalid_code",
    "code_already_used",
    "bad_verification_code",
    "bad_refresh_token",
];

/// Tokens as a provider answered them. `Debug` redacts the tokens, so logging one leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    /// The token sent upstream as `Authorization: Bearer …`.
    pub access_token: String,
    /// The token that gets a new access token; `None` when the provider sent none, in which case
    /// the caller keeps the one it has.
    pub refresh_token: Option<String>,
    /// Seconds until the access token expires, when the provider said.
    pub expires_in: Option<u64>,
    /// Granted scopes as the provider wrote them, if it did.
    pub scope: Option<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Why a token endpoint's answer gave no tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenResponseError {
    /// The grant (code or refresh token) is invalid, expired or revoked: the user must authorize
    /// again.
    #[error(
        "the authorization code or refresh token was refused; the user must authorize again{}",
        described(.description)
    )]
    InvalidGrant {
        /// The provider's `error_description`, shortened.
        description: Option<String>,
    },
    /// Any other OAuth error the provider reported (`error` field), with its description.
    #[error("the token endpoint reported `{error}`{}", described(.description))]
    Provider {
        /// The provider's `error` code, shortened.
        error: String,
        /// The provider's `error_description`, shortened.
        description: Option<String>,
    },
    /// Not a token response at all (HTTP error without an OAuth error body, unparseable body, no
    /// access token).
    #[error("the token endpoint's answer is not a token response: {0}")]
    Malformed(String),
}

fn described(description: &Option<String>) -> String {
    description
        .as_ref()
        .map(|text| format!(": {text}"))
        .unwrap_or_default()
}

/// Parses a token endpoint's answer. `token_path` is a JSON Pointer ("" = top level) to the object
/// that holds the token fields, e.g. "/authed_user" for Slack user tokens.
///
/// Errors are looked for at the top level, whatever `token_path` says, because that is where
/// providers put them (Slack's `ok` and `error` included).
pub fn parse_token_response(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    token_path: &str,
) -> Result<TokenSet, TokenResponseError> {
    let fields = decode_body(content_type, body);

    if let Some(fields) = &fields {
        reported_error(fields)?;
    }

    if !(200..300).contains(&status) {
        return Err(malformed(format!("HTTP {status}")));
    }
    let fields = fields.ok_or_else(|| malformed("the body is neither a JSON object nor a form"))?;

    // The empty pointer names the whole document.
    let document = Value::Object(fields);
    let fields = document
        .pointer(token_path)
        .and_then(Value::as_object)
        .ok_or_else(|| malformed(format!("no object at `{token_path}`")))?;
    token_set(fields)
}

/// The body as field names and values, if it is a JSON object or form pairs. Form values become
/// JSON strings so both shapes are read the same way.
///
/// A content type naming JSON or a form is trusted; any other (GitHub's `text/plain`, none at
/// all) is a guess, so JSON is tried first and then form pairs.
fn decode_body(content_type: Option<&str>, body: &[u8]) -> Option<Map<String, Value>> {
    let media_type = content_type
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default();

    if media_type.contains("json") {
        serde_json::from_slice(body).ok()
    } else if media_type == "application/x-www-form-urlencoded" {
        Some(decode_form(body))
    } else {
        serde_json::from_slice(body)
            .ok()
            .or_else(|| body.contains(&b'=').then(|| decode_form(body)))
    }
}

fn decode_form(body: &[u8]) -> Map<String, Value> {
    let mut fields = Map::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        // A repeated name is ambiguous; the first one wins rather than letting a later one
        // silently replace it.
        fields
            .entry(name.into_owned())
            .or_insert_with(|| Value::String(value.into_owned()));
    }
    fields
}

/// The error the provider reported in the body, if any: RFC 6749's `error` field, or Slack's
/// `"ok": false`, which Slack sends with HTTP 200.
fn reported_error(fields: &Map<String, Value>) -> Result<(), TokenResponseError> {
    let error = match fields.get("error") {
        // Some providers send `"error": null` or `""` alongside a successful answer.
        None | Some(Value::Null) => None,
        Some(Value::String(error)) if error.is_empty() => None,
        Some(Value::String(error)) => Some(error.as_str()),
        Some(_) => return Err(malformed("the `error` field is not a string")),
    };
    let slack_failed = fields.get("ok") == Some(&Value::Bool(false));

    let Some(error) = error else {
        if slack_failed {
            return Err(malformed("`ok` is false but no error is named"));
        }
        return Ok(());
    };

    let description = fields
        .get("error_description")
        .and_then(Value::as_str)
        .map(provider_text);
    if INVALID_GRANT_CODES.contains(&error) {
        Err(TokenResponseError::InvalidGrant { description })
    } else {
        Err(TokenResponseError::Provider {
            error: provider_text(error),
            description,
        })
    }
}

fn token_set(fields: &Map<String, Value>) -> Result<TokenSet, TokenResponseError> {
    let access_token = match fields.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token.clone(),
        _ => return Err(malformed("no access token")),
    };
    check_token_type(fields.get("token_type"))?;

    Ok(TokenSet {
        access_token,
        refresh_token: fields
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .map(str::to_owned),
        expires_in: fields.get("expires_in").and_then(seconds),
        scope: fields
            .get("scope")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Keyhole always sends the token as `Authorization: Bearer`, so a token of another scheme
/// (`mac`, `DPoP`, `pop`) would fail upstream, or worse, be used without the proof its scheme
/// demands. Refusing every unknown type, rather than listing the bad ones, keeps a new scheme
/// from passing unnoticed. A missing type and Slack's `bot` and `user`, which are bearer tokens
/// by another name, are accepted; the comparison ignores case because providers write `bearer`.
fn check_token_type(token_type: Option<&Value>) -> Result<(), TokenResponseError> {
    let token_type = match token_type {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(token_type)) => token_type,
        Some(_) => return Err(malformed("the token type is not a string")),
    };

    let bearer_like = ["bearer", "bot", "user"]
        .iter()
        .any(|accepted| token_type.eq_ignore_ascii_case(accepted));
    if !bearer_like {
        let token_type = provider_text(token_type);
        return Err(malformed(format!("unsupported token type `{token_type}`")));
    }
    Ok(())
}

/// The longest lifetime taken from a provider, ten years: a larger `expires_in` is read as
/// this, so that no timestamp computed from it can overflow.
const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;

/// `expires_in` as a whole number of seconds, written as a number or a string, at most
/// [`MAX_EXPIRES_IN`]. Anything else (negative, fractional, garbage) reads as unknown: the token
/// is then used until refused.
fn seconds(value: &Value) -> Option<u64> {
    let seconds = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    };
    seconds.map(|seconds| seconds.min(MAX_EXPIRES_IN))
}

/// Provider-chosen text on its way into an error message: shortened, and on one line so it
/// cannot forge log lines.
fn provider_text(text: &str) -> String {
    text.chars()
        .take(MAX_PROVIDER_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn malformed(reason: impl Into<String>) -> TokenResponseError {
    TokenResponseError::Malformed(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn parse(status: u16, content_type: Option<&str>, body: &str) -> TokenResult {
        parse_token_response(status, content_type, body.as_bytes(), "")
    }

    type TokenResult = Result<TokenSet, TokenResponseError>;

    fn malformed_with(reason: &str) -> TokenResult {
        Err(TokenResponseError::Malformed(reason.to_owned()))
    }

    #[test]
    fn reads_a_json_body() -> Result<(), TokenResponseError> {
        let body = r#"{"access_token":"at","token_type":"Bearer","expires_in":3599,
            "refresh_token":"rt","scope":"read write"}"#;
        let expected = TokenSet {
            access_token: "at".to_owned(),
            refresh_token: Some("rt".to_owned()),
            expires_in: Some(3599),
            scope: Some("read write".to_owned()),
        };

        assert_eq!(parse(200, JSON, body)?, expected);
        assert_eq!(
            parse(200, Some("application/json; charset=utf-8"), body)?,
            expected
        );
        assert_eq!(parse(200, Some("text/javascript+JSON"), body)?, expected);
        assert_eq!(parse(200, None, body)?, expected);
        Ok(())
    }

    #[test]
    fn reads_a_form_body() -> Result<(), TokenResponseError> {
        let body = "access_token=gho_x&scope=repo%2Cuser&token_type=bearer";
        let expected = TokenSet {
            access_token: "gho_x".to_owned(),
            refresh_token: None,
            expires_in: None,
            scope: Some("repo,user".to_owned()),
        };

        assert_eq!(parse(200, FORM, body)?, expected);
        assert_eq!(
            parse(200, Some("text/plain; charset=utf-8"), body)?,
            expected
        );
        assert_eq!(parse(200, None, body)?, expected);
        Ok(())
    }

    #[test]
    fn a_body_that_is_neither_json_nor_form_is_malformed() {
        let expected = malformed_with("the body is neither a JSON object nor a form");

        assert_eq!(parse(200, JSON, "access_token=at"), expected);
        assert_eq!(parse(200, JSON, r#"["access_token"]"#), expected);
        assert_eq!(parse(200, Some("text/plain"), "OK"), expected);
        assert_eq!(parse(200, None, ""), expected);
    }

    #[test]
    fn an_error_sent_with_http_200_is_reported() {
        let body = r#"{"error":"incorrect_client_credentials","error_description":"Wrong."}"#;

        assert_eq!(
            parse(200, JSON, body),
            Err(TokenResponseError::Provider {
                error: "incorrect_client_credentials".to_owned(),
                description: Some("Wrong.".to_owned()),
            })
        );
    }

    #[test]
    fn slack_ok_false_is_an_error() {
        assert_eq!(
            parse(200, JSON, r#"{"ok":false,"error":"invalid_client_id"}"#),
            Err(TokenResponseError::Provider {
                error: "invalid_client_id".to_owned(),
                description: None,
            })
        );
        assert_eq!(
            parse(200, JSON, r#"{"ok":false,"error":"invalid_code"}"#),
            Err(TokenResponseError::InvalidGrant { description: None })
        );
        assert_eq!(
            parse(200, JSON, r#"{"ok":false}"#),
            malformed_with("`ok` is false but no error is named")
        );
    }

    #[test]
    fn slack_ok_true_is_a_success() -> Result<(), TokenResponseError> {
        let body =
            r#"{"ok":true,"access_token":"xoxb-bot","token_type":"bot","scope":"chat:write"}"#;

        let tokens = parse(200, JSON, body)?;
        assert_eq!(tokens.access_token, "xoxb-bot");
        assert_eq!(tokens.scope.as_deref(), Some("chat:write"));
        Ok(())
    }

    #[test]
    fn an_empty_or_null_error_field_is_no_error() -> Result<(), TokenResponseError> {
        assert_eq!(
            parse(200, JSON, r#"{"error":null,"access_token":"at"}"#)?.access_token,
            "at"
        );
        assert_eq!(
            parse(200, FORM, "error=&access_token=at")?.access_token,
            "at"
        );
        Ok(())
    }

    #[test]
    fn an_error_in_a_form_body_is_reported() {
        let body = "error=bad_verification_code&error_description=The+code+is+incorrect.";

        assert_eq!(
            parse(200, FORM, body),
            Err(TokenResponseError::InvalidGrant {
                description: Some("The code is incorrect.".to_owned()),
            })
        );
        assert_eq!(
            parse(200, Some("text/plain"), "error=unsupported_grant_type"),
            Err(TokenResponseError::Provider {
                error: "unsupported_grant_type".to_owned(),
                description: None,
            })
        );
    }

    #[test]
    fn spent_grant_codes_of_every_provider_are_invalid_grant() {
        for code in [
            "invalid_grant",
            "invalid_refresh_token",
            "invalid_code",
            "code_already_used",
            "bad_verification_code",
            "bad_refresh_token",
        ] {
            let body = format!(r#"{{"error":"{code}","error_description":"gone"}}"#);

            assert_eq!(
                parse(400, JSON, &body),
                Err(TokenResponseError::InvalidGrant {
                    description: Some("gone".to_owned()),
                }),
                "{code}"
            );
        }
    }

    #[test]
    fn an_http_error_with_an_oauth_body_is_reported() {
        assert_eq!(
            parse(400, JSON, r#"{"error":"invalid_grant"}"#),
            Err(TokenResponseError::InvalidGrant { description: None })
        );
        assert_eq!(
            parse(401, None, r#"{"error":"invalid_client"}"#),
            Err(TokenResponseError::Provider {
                error: "invalid_client".to_owned(),
                description: None,
            })
        );
    }

    #[test]
    fn an_http_error_without_an_oauth_body_is_malformed_and_does_not_quote_it() {
        let html = "<html>upstream said access_token=secret-at</html>";

        assert_eq!(
            parse(502, Some("text/html"), html),
            malformed_with("HTTP 502")
        );
        assert_eq!(parse(500, JSON, "not json"), malformed_with("HTTP 500"));
        assert_eq!(parse(503, None, ""), malformed_with("HTTP 503"));
        // A token in an error answer is still not a success.
        assert_eq!(
            parse(400, JSON, r#"{"access_token":"secret-at"}"#),
            malformed_with("HTTP 400")
        );
        assert_eq!(parse(302, None, ""), malformed_with("HTTP 302"));
    }

    #[test]
    fn expires_in_is_read_as_a_number_or_a_string() -> Result<(), TokenResponseError> {
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","expires_in":3599}"#)?.expires_in,
            Some(3599)
        );
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","expires_in":"3599"}"#)?.expires_in,
            Some(3599)
        );
        assert_eq!(
            parse(200, FORM, "access_token=at&expires_in=28800")?.expires_in,
            Some(28800)
        );
        Ok(())
    }

    #[test]
    fn an_absurd_expires_in_is_capped() -> Result<(), TokenResponseError> {
        let body = format!(r#"{{"access_token":"at","expires_in":{}}}"#, u64::MAX);
        assert_eq!(parse(200, JSON, &body)?.expires_in, Some(MAX_EXPIRES_IN));
        Ok(())
    }

    #[test]
    fn a_missing_expires_in_is_none() -> Result<(), TokenResponseError> {
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at"}"#)?.expires_in,
            None
        );
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","expires_in":null}"#)?.expires_in,
            None
        );
        Ok(())
    }

    #[test]
    fn a_negative_or_garbage_expires_in_is_none() -> Result<(), TokenResponseError> {
        for expires_in in [
            r#"-1"#,
            r#""-1""#,
            r#"1.5"#,
            r#""soon""#,
            r#""""#,
            r#"true"#,
            r#"{}"#,
        ] {
            let body = format!(r#"{{"access_token":"at","expires_in":{expires_in}}}"#);

            assert_eq!(parse(200, JSON, &body)?.expires_in, None, "{expires_in}");
        }
        Ok(())
    }

    #[test]
    fn a_missing_or_lower_case_bearer_token_type_is_accepted() -> Result<(), TokenResponseError> {
        for token_type in [
            "",
            r#","token_type":null"#,
            r#","token_type":"bearer""#,
            r#","token_type":"BEARER""#,
        ] {
            let body = format!(r#"{{"access_token":"at"{token_type}}}"#);

            assert_eq!(parse(200, JSON, &body)?.access_token, "at", "{token_type}");
        }
        Ok(())
    }

    #[test]
    fn slack_bot_and_user_token_types_are_accepted() -> Result<(), TokenResponseError> {
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","token_type":"bot"}"#)?.access_token,
            "at"
        );
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","token_type":"User"}"#)?.access_token,
            "at"
        );
        Ok(())
    }

    #[test]
    fn a_token_type_other_than_bearer_is_malformed() {
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","token_type":"mac"}"#),
            malformed_with("unsupported token type `mac`")
        );
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","token_type":"DPoP"}"#),
            malformed_with("unsupported token type `DPoP`")
        );
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at","token_type":1}"#),
            malformed_with("the token type is not a string")
        );
    }

    #[test]
    fn a_missing_or_empty_refresh_token_is_none() -> Result<(), TokenResponseError> {
        assert_eq!(
            parse(200, JSON, r#"{"access_token":"at"}"#)?.refresh_token,
            None
        );
        assert_eq!(
            parse(200, FORM, "access_token=at&refresh_token=")?.refresh_token,
            None
        );
        Ok(())
    }

    #[test]
    fn reads_slack_user_tokens_at_the_token_path() -> Result<(), TokenResponseError> {
        let body = br#"{"ok":true,"access_token":"xoxb-bot","token_type":"bot","scope":"commands",
            "authed_user":{"id":"U1","scope":"chat:write","access_token":"xoxp-user",
            "token_type":"user"}}"#;

        let tokens = parse_token_response(200, JSON, body, "/authed_user")?;
        assert_eq!(
            tokens,
            TokenSet {
                access_token: "xoxp-user".to_owned(),
                refresh_token: None,
                expires_in: None,
                scope: Some("chat:write".to_owned()),
            }
        );
        Ok(())
    }

    #[test]
    fn fields_are_read_only_at_the_token_path() -> Result<(), TokenResponseError> {
        let body = br#"{"refresh_token":"top-rt","expires_in":60,"nested":{"access_token":"at"}}"#;

        let tokens = parse_token_response(200, JSON, body, "/nested")?;
        assert_eq!(tokens.refresh_token, None);
        assert_eq!(tokens.expires_in, None);
        Ok(())
    }

    #[test]
    fn a_token_path_that_does_not_resolve_to_an_object_is_malformed() {
        let body = br#"{"ok":true,"access_token":"xoxb-bot","authed_user":"U1"}"#;

        for token_path in ["/authed_user", "/missing", "authed_user"] {
            assert_eq!(
                parse_token_response(200, JSON, body, token_path),
                malformed_with(&format!("no object at `{token_path}`"))
            );
        }
        assert_eq!(
            parse_token_response(200, FORM, b"access_token=at", "/authed_user"),
            malformed_with("no object at `/authed_user`")
        );
    }

    #[test]
    fn a_missing_or_empty_access_token_is_malformed() {
        for body in [r#"{}"#, r#"{"access_token":""}"#, r#"{"access_token":42}"#] {
            assert_eq!(
                parse(200, JSON, body),
                malformed_with("no access token"),
                "{body}"
            );
        }
        assert_eq!(
            parse(200, FORM, "scope=repo"),
            malformed_with("no access token")
        );
    }

    #[test]
    fn debug_redacts_the_tokens() -> Result<(), TokenResponseError> {
        let body = r#"{"access_token":"secret-at","refresh_token":"secret-rt","scope":"repo"}"#;

        let printed = format!("{:?}", parse(200, JSON, body)?);
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("repo"), "{printed}");
        Ok(())
    }

    #[test]
    fn provider_text_in_errors_is_shortened_to_one_line() {
        let body = format!(
            r#"{{"error":"server_error","error_description":"line one\nline two {}"}}"#,
            "x".repeat(500)
        );

        let Err(error) = parse(500, JSON, &body) else {
            panic!("an error answer was accepted");
        };
        let TokenResponseError::Provider {
            description: Some(description),
            ..
        } = &error
        else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(description.chars().count(), MAX_PROVIDER_TEXT);
        assert!(description.starts_with("line one line two "));
        assert!(!error.to_string().contains('\n'));
    }

    #[test]
    fn error_messages_never_quote_tokens_or_bodies() {
        let answers: [(u16, Option<&str>, &str); 4] = [
            (500, Some("text/html"), "<p>secret-body</p>"),
            (
                200,
                JSON,
                r#"{"access_token":"secret-at","token_type":"mac"}"#,
            ),
            (200, JSON, r#"{"refresh_token":"secret-rt"}"#),
            (200, Some("text/plain"), "refresh_token=secret-rt"),
        ];

        for (status, content_type, body) in answers {
            let Err(error) = parse(status, content_type, body) else {
                panic!("{body} was accepted");
            };
            let message = error.to_string();
            assert!(!message.contains("secret"), "{message}");
        }
    }
}
