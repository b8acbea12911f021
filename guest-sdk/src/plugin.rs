//! The self-description and the dispatch of calls to tools.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::__private::WitToolError;
use crate::ToolError;
use crate::oauth::OAuth;

/// The version of the description format this SDK writes (`wit/description.schema.json`).
const DESCRIPTION_VERSION: u32 = 1;

/// One tool of a plugin: its arguments struct, its name and what it does.
///
/// The JSON Schema the model sees is derived from the struct with [`JsonSchema`]; doc comments on
/// fields become their descriptions. The host validates arguments against it before the call.
pub trait Tool: DeserializeOwned + JsonSchema {
    /// The tool's name, unique in the plugin: lower case letters, digits and `_`, at most 30.
    const NAME: &'static str;

    /// What the tool does, written for a language model deciding whether to call it.
    const DESCRIPTION: &'static str;

    /// Whether the tool acts on the user's account: the host runs it only for users who have
    /// authorized the plugin (see [`Plugin::oauth`]), and asks the others to authorize first.
    const REQUIRES_AUTHORIZATION: bool = false;

    /// What the tool returns, serialized to JSON for the caller.
    type Output: Serialize;

    /// Runs the tool with its arguments.
    fn run(self) -> Result<Self::Output, ToolError>;
}

/// A setting the admin configures for the plugin, read with [`crate::setting`].
#[derive(Debug, Clone)]
pub struct Setting {
    name: &'static str,
    description: &'static str,
    required: bool,
    secret_hosts: Option<Vec<&'static str>>,
}

impl Setting {
    /// A setting without which the host refuses to run the plugin's tools.
    pub fn required(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            required: true,
            secret_hosts: None,
        }
    }

    /// A setting the plugin can do without.
    pub fn optional(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            required: false,
            secret_hosts: None,
        }
    }

    /// A required, write-only secret such as an API key: the plugin can never read it. Write
    /// [`crate::oauth::secret_setting`]`(name)` where the key goes in a request to one of
    /// `hosts`, and the host substitutes it; a request that carries it anywhere else is refused.
    pub fn secret(name: &'static str, description: &'static str, hosts: &[&'static str]) -> Self {
        Self {
            name,
            description,
            required: true,
            secret_hosts: Some(hosts.to_vec()),
        }
    }

    /// Like [`Setting::secret`], but the plugin's tools run without it too.
    pub fn optional_secret(
        name: &'static str,
        description: &'static str,
        hosts: &[&'static str],
    ) -> Self {
        Self {
            required: false,
            ..Self::secret(name, description, hosts)
        }
    }
}

/// A tool as the plugin knows it: its description, and how to run it.
struct ToolEntry {
    name: &'static str,
    description: &'static str,
    requires_authorization: bool,
    parameters: fn() -> Value,
    run: fn(&str) -> Result<Value, ToolError>,
}

/// A plugin's self-description: who it is, its tools, the hosts it calls, the settings it reads.
///
/// Build it with the chained methods and hand the function that returns it to
/// [`crate::export_plugin!`].
pub struct Plugin {
    id: &'static str,
    name: &'static str,
    version: &'static str,
    description: &'static str,
    hosts: Vec<&'static str>,
    settings: Vec<Setting>,
    tools: Vec<ToolEntry>,
    oauth: Option<OAuth>,
    scratch: bool,
}

impl Plugin {
    /// A plugin with no tools yet.
    ///
    /// `id` is its stable identifier (lower case letters, digits and `-`, at most 31); uploading a
    /// plugin with the same id replaces the installed one.
    pub fn new(
        id: &'static str,
        name: &'static str,
        version: &'static str,
        description: &'static str,
    ) -> Self {
        Self {
            id,
            name,
            version,
            description,
            hosts: Vec::new(),
            settings: Vec::new(),
            tools: Vec::new(),
            oauth: None,
            scratch: false,
        }
    }

    /// Declares a host the plugin sends requests to: `api.example.com`, `api.example.com:8443`,
    /// or `*.example.com` for any subdomain. Requests to any other host are refused.
    pub fn host(mut self, host: &'static str) -> Self {
        self.hosts.push(host);
        self
    }

    /// Declares a setting the plugin reads.
    pub fn setting(mut self, setting: Setting) -> Self {
        self.settings.push(setting);
        self
    }

    /// Declares the OAuth 2.0 provider that tools with [`Tool::REQUIRES_AUTHORIZATION`] act
    /// through.
    pub fn oauth(mut self, oauth: OAuth) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// Asks for scratch space: each call then finds a fresh, empty directory at `/scratch`
    /// (use `std::fs` on it), removed when the call ends. Nothing else of the host's filesystem
    /// is visible, and nothing written there outlives the call.
    pub fn scratch(mut self) -> Self {
        self.scratch = true;
        self
    }

    /// Adds a tool.
    pub fn tool<T: Tool>(mut self) -> Self {
        self.tools.push(ToolEntry {
            name: T::NAME,
            description: T::DESCRIPTION,
            requires_authorization: T::REQUIRES_AUTHORIZATION,
            parameters: parameters_of::<T>,
            run: run_tool::<T>,
        });
        self
    }

    fn to_json(&self) -> Value {
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": (tool.parameters)(),
                    "requires_authorization": tool.requires_authorization,
                })
            })
            .collect();
        let settings: Vec<Value> = self
            .settings
            .iter()
            .map(|setting| {
                let mut json = json!({
                    "name": setting.name,
                    "description": setting.description,
                    "required": setting.required,
                });
                if let Some(hosts) = &setting.secret_hosts {
                    json["secret"] = json!(true);
                    json["hosts"] = json!(hosts);
                }
                json
            })
            .collect();

        let mut description = json!({
            "description_version": DESCRIPTION_VERSION,
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "tools": tools,
            "hosts": self.hosts,
            "settings": settings,
        });
        if self.scratch {
            description["scratch"] = json!(true);
        }
        if let Some(oauth) = &self.oauth {
            description["oauth"] = oauth.to_json();
        }
        description
    }
}

/// The JSON Schema of a tool's arguments, without the `title` schemars copies from the Rust
/// type name: the model sees the tool's name and description instead.
fn parameters_of<T: Tool>() -> Value {
    let mut schema = schemars::schema_for!(T).to_value();
    if let Value::Object(map) = &mut schema {
        map.remove("title");
        if !map.contains_key("properties") && map.get("type") == Some(&json!("object")) {
            map.insert("properties".to_owned(), Value::Object(Map::new()));
        }
    }
    schema
}

fn run_tool<T: Tool>(arguments: &str) -> Result<Value, ToolError> {
    let arguments: T = serde_json::from_str(arguments)
        .map_err(|err| ToolError::invalid_arguments(err.to_string()))?;
    let output = arguments.run()?;
    serde_json::to_value(output)
        .map_err(|err| ToolError::other(format!("the tool's output is not JSON: {err}")))
}

/// The `describe` export.
pub fn describe(plugin: &Plugin) -> String {
    plugin.to_json().to_string()
}

/// The `call` export: finds the tool and runs it.
pub fn call(plugin: &Plugin, tool: &str, arguments: &str) -> Result<String, WitToolError> {
    let entry = plugin
        .tools
        .iter()
        .find(|entry| entry.name == tool)
        .ok_or_else(|| ToolError::invalid_arguments(format!("no tool is named `{tool}`")))?;
    let output = (entry.run)(arguments)?;
    Ok(output.to_string())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::Setting;

    /// Adds two numbers.
    #[derive(Deserialize, JsonSchema)]
    struct Add {
        /// The first.
        a: i64,
        /// The second.
        b: i64,
    }

    impl Tool for Add {
        const NAME: &'static str = "add";
        const DESCRIPTION: &'static str = "Adds two numbers.";
        type Output = i64;

        fn run(self) -> Result<i64, ToolError> {
            self.a
                .checked_add(self.b)
                .ok_or_else(|| ToolError::invalid_arguments("the sum overflows"))
        }
    }

    #[derive(Deserialize, JsonSchema)]
    struct Nothing {}

    impl Tool for Nothing {
        const NAME: &'static str = "nothing";
        const DESCRIPTION: &'static str = "Does nothing.";
        const REQUIRES_AUTHORIZATION: bool = true;
        type Output = ();

        fn run(self) -> Result<(), ToolError> {
            Ok(())
        }
    }

    fn plugin() -> Plugin {
        Plugin::new("calc", "Calculator", "1.0.0", "Arithmetic.")
            .host("api.example.com")
            .setting(Setting::required("precision", "Digits."))
            .setting(Setting::secret("api_key", "The key.", &["api.example.com"]))
            .oauth(
                OAuth::new("https://example.com/auth", "https://example.com/token")
                    .scope("read")
                    .api_host("api.example.com")
                    .param("access_type", "offline")
                    .comma_separated_scopes()
                    .token_path("/authed_user"),
            )
            .tool::<Add>()
            .tool::<Nothing>()
    }

    #[test]
    fn the_description_follows_the_published_schema() {
        let schema: Value =
            serde_json::from_str(include_str!("../wit/description.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let description: Value = serde_json::from_str(&describe(&plugin())).unwrap();

        let errors: Vec<String> = validator
            .iter_errors(&description)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            description["tools"][0]["parameters"]["required"],
            json!(["a", "b"])
        );
        assert_eq!(description["tools"][0]["parameters"].get("title"), None);
        assert_eq!(
            description["tools"][1]["parameters"]["properties"],
            json!({})
        );
        assert_eq!(description["settings"][0]["required"], json!(true));
        assert_eq!(description["settings"][1]["secret"], json!(true));
        assert_eq!(
            description["tools"][1]["requires_authorization"],
            json!(true)
        );
        assert_eq!(description["oauth"]["scope_separator"], json!(","));
        assert_eq!(
            description["oauth"]["authorization_params"]["access_type"],
            json!("offline")
        );
    }

    #[test]
    fn calls_reach_their_tool() {
        assert_eq!(call(&plugin(), "add", r#"{"a": 2, "b": 3}"#).unwrap(), "5");
        assert_eq!(call(&plugin(), "nothing", "{}").unwrap(), "null");
    }

    #[test]
    fn failures_are_typed() {
        let overflow = format!(r#"{{"a": {}, "b": 1}}"#, i64::MAX);
        assert!(matches!(
            call(&plugin(), "add", &overflow),
            Err(WitToolError::InvalidArguments(_))
        ));
        assert!(matches!(
            call(&plugin(), "add", r#"{"a": "two"}"#),
            Err(WitToolError::InvalidArguments(_))
        ));
        assert!(matches!(
            call(&plugin(), "divide", "{}"),
            Err(WitToolError::InvalidArguments(_))
        ));
    }
}
