//! A plugin's self-description: what `tools.describe` returns, validated at upload.
//!
//! The description is a versioned JSON document so that it can grow (OAuth, secret settings)
//! without breaking plugins already installed: the host keeps accepting every
//! `description_version` it ever accepted. Its JSON Schema is published in
//! `wit/description.schema.json` and is the first check; the rules a schema cannot express
//! (unique names, compilable argument schemas) follow.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use jsonschema::{Retrieve, Uri, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The published schema of the description document.
pub const DESCRIPTION_SCHEMA: &str = include_str!("../../wit/description.schema.json");

static DESCRIPTION_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(DESCRIPTION_SCHEMA).expect("the description schema is valid JSON");
    compile_schema(&schema).expect("the description schema compiles")
});

/// A plugin's self-description, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The version of the document format.
    pub description_version: u32,
    /// Stable identifier; an upload with the same id replaces the plugin.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// What the plugin is for.
    pub description: String,
    /// The tools it offers.
    pub tools: Vec<ToolSpec>,
    /// The only hosts its requests may go to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The settings it reads.
    #[serde(default)]
    pub settings: Vec<SettingSpec>,
    /// How it gets the user's authorization, when a tool acts on the user's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthSpec>,
    /// Whether each call gets a fresh directory at `/scratch`, removed when the call ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scratch: bool,
}

/// The OAuth 2.0 provider a plugin's tools act through, and how it departs from the RFC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthSpec {
    /// Where the user's browser is sent to authorize.
    pub authorization_url: String,
    /// Where codes are exchanged and tokens refreshed; it receives the client secret.
    pub token_url: String,
    /// Where tokens are revoked when the user disconnects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    /// The scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The only hosts the user's token is sent to.
    pub api_hosts: Vec<String>,
    /// Extra query parameters of the authorization URL.
    #[serde(default)]
    pub authorization_params: BTreeMap<String, String>,
    /// How scopes are joined.
    #[serde(default = "default_scope_separator")]
    pub scope_separator: String,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The body format of token requests.
    #[serde(default)]
    pub token_request_format: TokenRequestFormat,
    /// Whether PKCE (S256) is used.
    #[serde(default = "default_true")]
    pub pkce: bool,
    /// JSON Pointer to the token fields in the token response.
    #[serde(default)]
    pub token_path: String,
}

/// How the client authenticates at the token endpoint; exactly one is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Form,
}

/// The body format of token requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRequestFormat {
    /// `application/x-www-form-urlencoded`, as the RFC says.
    #[default]
    Form,
    /// `application/json`.
    Json,
}

fn default_scope_separator() -> String {
    " ".to_owned()
}

fn default_true() -> bool {
    true
}

impl OAuthSpec {
    /// What the admin approves by setting the OAuth client: where the secret and the tokens
    /// go and what is asked for. A new version that changes any of it needs approval again.
    pub fn approval_fingerprint(&self) -> String {
        let approved = serde_json::json!({
            "authorization_url": self.authorization_url,
            "token_url": self.token_url,
            "revocation_url": self.revocation_url,
            "api_hosts": self.api_hosts,
            "scopes": self.scopes,
        });
        hex::encode(Sha256::digest(approved.to_string().as_bytes()))
    }

    /// Whether existing tokens must be dropped when moving from `self` to `next`: the tokens
    /// would otherwise reach a token endpoint or hosts the user never agreed to.
    pub fn invalidates_tokens(&self, next: &OAuthSpec) -> bool {
        self.token_url != next.token_url || self.api_hosts != next.api_hosts
    }
}

/// One tool as the plugin declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Unique within the plugin.
    pub name: String,
    /// What the tool does, for a language model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    /// Whether the tool runs only for users who authorized the plugin.
    #[serde(default)]
    pub requires_authorization: bool,
}

/// One setting as the plugin declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingSpec {
    /// The setting's name.
    pub name: String,
    /// What it is for, shown to the admin.
    pub description: String,
    /// Whether calls are refused while it is unset.
    #[serde(default)]
    pub required: bool,
    /// A write-only secret, never readable by the plugin.
    #[serde(default)]
    pub secret: bool,
    /// For a secret: the only hosts its placeholder may be sent to.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Why a description was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DescriptionError {
    /// Not JSON at all.
    #[error("the plugin's description is not JSON: {0}")]
    NotJson(String),
    /// Valid JSON that breaks the published schema or a rule beside it.
    #[error("the plugin's description is invalid: {0}")]
    Invalid(String),
}

impl Description {
    /// Parses and validates a description as returned by `tools.describe`.
    pub fn parse(json: &str) -> Result<Self, DescriptionError> {
        let value: Value =
            serde_json::from_str(json).map_err(|err| DescriptionError::NotJson(err.to_string()))?;

        let problems: Vec<String> = DESCRIPTION_VALIDATOR
            .iter_errors(&value)
            .take(5)
            .map(|err| format!("at `{}`: {err}", err.instance_path))
            .collect();
        if !problems.is_empty() {
            return Err(DescriptionError::Invalid(problems.join("; ")));
        }

        let description: Self = serde_json::from_value(value)
            .map_err(|err| DescriptionError::Invalid(err.to_string()))?;
        description.check_rules()?;
        Ok(description)
    }

    /// The rules beside the schema: names are unique and argument schemas compile.
    fn check_rules(&self) -> Result<(), DescriptionError> {
        let invalid = |message: String| Err(DescriptionError::Invalid(message));

        let mut tools = BTreeSet::new();
        for tool in &self.tools {
            if !tools.insert(&tool.name) {
                return invalid(format!("two tools are named `{}`", tool.name));
            }
            if let Err(err) = compile_schema(&tool.parameters) {
                return invalid(format!("the parameters of `{}`: {err}", tool.name));
            }
            if let Err(err) = check_reference_loops(&tool.parameters) {
                return invalid(format!("the parameters of `{}`: {err}", tool.name));
            }
        }

        if let Some(tool) = self.tools.iter().find(|tool| tool.requires_authorization)
            && self.oauth.is_none()
        {
            return invalid(format!(
                "the tool `{}` requires authorization but the plugin declares no `oauth`",
                tool.name
            ));
        }

        let mut settings = BTreeSet::new();
        for setting in &self.settings {
            if !settings.insert(&setting.name) {
                return invalid(format!("two settings are named `{}`", setting.name));
            }
            if setting.secret && setting.hosts.is_empty() {
                return invalid(format!(
                    "the secret setting `{}` must declare the hosts it is sent to",
                    setting.name
                ));
            }
            if !setting.secret && !setting.hosts.is_empty() {
                return invalid(format!(
                    "only secret settings declare hosts, and `{}` is not secret",
                    setting.name
                ));
            }
        }
        Ok(())
    }

    /// The tool with this name.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|tool| tool.name == name)
    }

    /// Compiles each tool's argument schema, by tool name.
    pub fn argument_validators(&self) -> Result<HashMap<String, Validator>, DescriptionError> {
        self.tools
            .iter()
            .map(|tool| {
                compile_schema(&tool.parameters)
                    .map(|validator| (tool.name.clone(), validator))
                    .map_err(|err| DescriptionError::Invalid(format!("`{}`: {err}", tool.name)))
            })
            .collect()
    }
}

/// Refuses to load any schema by reference: plugin schemas are self-contained, and loading
/// would let a plugin make the host fetch URLs or read files.
struct NoRetrieval;

impl Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("`{uri}` is not loaded: schemas must be self-contained").into())
    }
}

/// Compiles a JSON Schema with every external reference refused.
pub fn compile_schema(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_retriever(NoRetrieval)
        .build(schema)
        .map_err(|err| err.to_string())
}

/// One way the arguments break the tool's schema, without the offending value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArgumentProblem {
    /// JSON Pointer to the offending part of the arguments.
    pub path: String,
    /// What is wrong, with the value masked.
    pub message: String,
}

/// Checks arguments against a tool's schema. Messages never quote argument values: they may be
/// personal data the model copied from the conversation.
pub fn check_arguments(
    validator: &Validator,
    arguments: &Value,
) -> Result<(), Vec<ArgumentProblem>> {
    let problems: Vec<ArgumentProblem> = validator
        .iter_errors(arguments)
        .take(10)
        .map(|err| ArgumentProblem {
            path: err.instance_path.to_string(),
            message: masked_message(&err),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A problem's message without the offending value, nor the names of unexpected properties,
/// which are the caller's data too.
fn masked_message(err: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    match &err.kind {
        Kind::AdditionalProperties { .. } | Kind::UnevaluatedProperties { .. } => {
            "has properties the schema does not allow".to_owned()
        }
        Kind::PropertyNames { .. } => "has a property name the schema does not allow".to_owned(),
        _ => err.masked_with("the value").to_string(),
    }
}

/// Refuses schemas whose references loop without descending into the instance: validating
/// against one recurses forever on the same value. (A loop through `properties` or `items`
/// is fine: it ends with the instance.)
fn check_reference_loops(schema: &Value) -> Result<(), String> {
    fn same_instance_children(node: &Value) -> Vec<String> {
        let mut children = Vec::new();
        let Value::Object(map) = node else {
            return children;
        };
        for keyword in ["$ref", "$dynamicRef", "$recursiveRef"] {
            if let Some(Value::String(target)) = map.get(keyword) {
                children.push(target.clone());
            }
        }
        for keyword in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(items)) = map.get(keyword) {
                for index in 0..items.len() {
                    children.push(format!("@{keyword}/{index}"));
                }
            }
        }
        for keyword in ["not", "if", "then", "else"] {
            if map.contains_key(keyword) {
                children.push(format!("@{keyword}"));
            }
        }
        if let Some(Value::Object(dependent)) = map.get("dependentSchemas") {
            for name in dependent.keys() {
                children.push(format!("@dependentSchemas/{}", escape_pointer(name)));
            }
        }
        children
    }

    fn resolve(root: &Value, from: &str, child: &str) -> Option<String> {
        if let Some(relative) = child.strip_prefix('@') {
            return Some(format!("{from}/{relative}"));
        }
        let pointer = child.strip_prefix('#')?;
        if pointer.is_empty() || pointer.starts_with('/') {
            return root.pointer(pointer).map(|_| pointer.to_owned());
        }
        // A `#name` anchor: conservatively treat it as the root, which every loop reaches.
        Some(String::new())
    }

    fn visit(
        root: &Value,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        if done.contains(at) {
            return Ok(());
        }
        if path.iter().any(|p| p == at) {
            return Err(format!(
                "`{}` refers back to itself without consuming any input",
                if at.is_empty() { "#" } else { at }
            ));
        }
        if path.len() > 256 {
            return Err("references nest more than 256 deep".to_owned());
        }
        let Some(node) = root.pointer(at) else {
            return Ok(());
        };
        path.push(at.to_owned());
        for child in same_instance_children(node) {
            if let Some(next) = resolve(root, at, &child) {
                visit(root, &next, path, done)?;
            }
        }
        path.pop();
        done.insert(at.to_owned());
        Ok(())
    }

    let mut done = BTreeSet::new();
    let mut stack = vec![String::new()];
    // Every subschema can start a loop, not only the root: walk all of them.
    while let Some(at) = stack.pop() {
        visit(schema, &at, &mut Vec::new(), &mut done)?;
        match schema.pointer(&at) {
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    if value.is_object() || value.is_array() {
                        stack.push(format!("{at}/{}", escape_pointer(key)));
                    }
                }
            }
            Some(Value::Array(items)) => {
                for index in 0..items.len() {
                    stack.push(format!("{at}/{index}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "description_version": 1,
            "id": "weather",
            "name": "Weather",
            "version": "0.1.0",
            "description": "Weather.",
            "tools": [{
                "name": "current_weather",
                "description": "Now.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            }],
            "hosts": ["api.open-meteo.com", "*.example.com", "localhost:8443"],
            "settings": [{"name": "units", "description": "Units.", "required": false}]
        })
    }

    fn parse(value: &Value) -> Result<Description, DescriptionError> {
        Description::parse(&value.to_string())
    }

    #[test]
    fn accepts_a_valid_description() {
        let description = parse(&valid()).unwrap();
        assert_eq!(description.id, "weather");
        assert_eq!(description.tools[0].name, "current_weather");
        assert!(!description.settings[0].required);
    }

    #[test]
    fn refuses_what_breaks_the_schema() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("bad id", Box::new(|v| v["id"] = json!("Weather!"))),
            ("long id", Box::new(|v| v["id"] = json!("a".repeat(32)))),
            (
                "bad tool name",
                Box::new(|v| v["tools"][0]["name"] = json!("Current Weather")),
            ),
            ("no tools", Box::new(|v| v["tools"] = json!([]))),
            (
                "future version",
                Box::new(|v| v["description_version"] = json!(99)),
            ),
            ("unknown field", Box::new(|v| v["surprise"] = json!(true))),
            (
                "host with path",
                Box::new(|v| v["hosts"] = json!(["api.example.com/x"])),
            ),
            (
                "host with scheme",
                Box::new(|v| v["hosts"] = json!(["https://api.example.com"])),
            ),
            (
                "parameters not an object",
                Box::new(|v| v["tools"][0]["parameters"] = json!("x")),
            ),
        ];
        for (case, mutate) in cases {
            let mut value = valid();
            mutate(&mut value);
            assert!(
                matches!(parse(&value), Err(DescriptionError::Invalid(_))),
                "{case}"
            );
        }
        assert!(matches!(
            Description::parse("{"),
            Err(DescriptionError::NotJson(_))
        ));
    }

    #[test]
    fn reads_an_oauth_block_with_its_defaults() {
        let mut value = valid();
        value["oauth"] = json!({
            "authorization_url": "https://slack.com/oauth/v2/authorize",
            "token_url": "https://slack.com/api/oauth.v2.access",
            "scopes": ["chat:write"],
            "api_hosts": ["slack.com"],
            "scope_separator": ",",
            "token_path": "/authed_user"
        });
        value["tools"][0]["requires_authorization"] = json!(true);
        let oauth = parse(&value).unwrap().oauth.unwrap();
        assert_eq!(oauth.client_auth, ClientAuth::Basic);
        assert_eq!(oauth.token_request_format, TokenRequestFormat::Form);
        assert!(oauth.pkce);
        assert_eq!(oauth.scope_separator, ",");
        assert_eq!(oauth.token_path, "/authed_user");
    }

    #[test]
    fn refuses_inconsistent_oauth_and_secrets() {
        let mut value = valid();
        value["tools"][0]["requires_authorization"] = json!(true);
        assert!(parse(&value).is_err(), "authorization without oauth");

        let mut value = valid();
        value["oauth"] = json!({
            "authorization_url": "http://example.com/auth",
            "token_url": "https://example.com/token",
            "api_hosts": ["api.example.com"]
        });
        assert!(parse(&value).is_err(), "plain http authorization URL");

        let mut value = valid();
        value["oauth"] = json!({
            "authorization_url": "https://example.com/auth",
            "token_url": "https://example.com/token",
            "api_hosts": ["api.example.com"],
            "authorization_params": {"redirect_uri": "https://evil.example"}
        });
        assert!(parse(&value).is_err(), "a parameter the host sets itself");

        let mut value = valid();
        value["settings"][0]["secret"] = json!(true);
        assert!(parse(&value).is_err(), "a secret without hosts");
        value["settings"][0]["hosts"] = json!(["api.example.com"]);
        assert!(parse(&value).is_ok());
    }

    #[test]
    fn refuses_duplicate_names() {
        let mut value = valid();
        let tool = value["tools"][0].clone();
        value["tools"].as_array_mut().unwrap().push(tool);
        assert!(parse(&value).is_err());

        let mut value = valid();
        let setting = value["settings"][0].clone();
        value["settings"].as_array_mut().unwrap().push(setting);
        assert!(parse(&value).is_err());
    }

    #[test]
    fn refuses_argument_schemas_that_load_remote_references() {
        let mut value = valid();
        value["tools"][0]["parameters"] =
            json!({"$ref": "https://169.254.169.254/latest/meta-data"});
        let err = parse(&value).unwrap_err().to_string();
        assert!(err.contains("not loaded"), "{err}");
    }

    #[test]
    fn refuses_schemas_that_loop_on_the_same_value() {
        let looping = [
            json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}),
            json!({"$ref": "#"}),
            json!({"anyOf": [{"not": {"$ref": "#"}}]}),
            json!({"properties": {"x": {"$defs": {"y": {"$ref": "#/properties/x/$defs/y"}}}}}),
        ];
        for schema in looping {
            assert!(check_reference_loops(&schema).is_err(), "{schema}");
        }

        let finite = [
            json!({"type": "object", "properties": {"child": {"$ref": "#"}}}),
            json!({"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"}),
            json!({"items": {"$ref": "#"}}),
            json!({"allOf": [{"type": "object"}, {"required": ["a"]}]}),
        ];
        for schema in finite {
            assert!(check_reference_loops(&schema).is_ok(), "{schema}");
        }
    }

    #[test]
    fn argument_problems_never_name_unexpected_properties() {
        let validator = compile_schema(&json!({"type": "object", "additionalProperties": false, "propertyNames": {"pattern": "^a"}})).unwrap();
        let problems = check_arguments(&validator, &json!({"SECRET_NAME": 1})).unwrap_err();
        for problem in problems {
            assert!(
                !problem.message.contains("SECRET_NAME"),
                "{}",
                problem.message
            );
        }
    }

    #[test]
    fn argument_problems_never_quote_the_value() {
        let description = parse(&valid()).unwrap();
        let validators = description.argument_validators().unwrap();
        let validator = &validators["current_weather"];

        assert!(check_arguments(validator, &json!({"city": "Berlin"})).is_ok());

        let problems = check_arguments(validator, &json!({"city": 4242424242_u64})).unwrap_err();
        assert_eq!(problems[0].path, "/city");
        assert!(
            !problems[0].message.contains("4242424242"),
            "{}",
            problems[0].message
        );

        let problems = check_arguments(validator, &json!({})).unwrap_err();
        assert!(
            problems[0].message.contains("city"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn any_approved_field_needs_approval_again_but_only_token_url_and_hosts_drop_tokens() {
        let base = json!({
            "authorization_url": "https://p.test/auth",
            "token_url": "https://p.test/token",
            "revocation_url": "https://p.test/revoke",
            "scopes": ["a"],
            "api_hosts": ["api.p.test"],
        });
        let spec = |changes: Value| -> OAuthSpec {
            let mut oauth = base.clone();
            for (name, value) in changes.as_object().unwrap() {
                oauth[name] = value.clone();
            }
            serde_json::from_value(oauth).unwrap()
        };
        let old = spec(json!({}));

        for (changes, drops) in [
            (json!({"authorization_url": "https://p.test/other"}), false),
            (json!({"revocation_url": "https://p.test/other"}), false),
            (json!({"scopes": ["a", "b"]}), false),
            (json!({"token_url": "https://evil.test/token"}), true),
            (json!({"api_hosts": ["api.p.test", "evil.test"]}), true),
        ] {
            let new = spec(changes.clone());
            assert_ne!(
                old.approval_fingerprint(),
                new.approval_fingerprint(),
                "{changes}"
            );
            assert_eq!(old.invalidates_tokens(&new), drops, "{changes}");
        }

        let same = spec(json!({"authorization_params": {"prompt": "consent"}}));
        assert_eq!(old.approval_fingerprint(), same.approval_fingerprint());
        assert!(!old.invalidates_tokens(&same));
    }
}
