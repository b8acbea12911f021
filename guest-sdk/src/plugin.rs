//! The self-description and the dispatch of calls to tools.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::__private::WitToolError;
use crate::ToolError;

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
}

impl Setting {
    /// A setting without which the host refuses to run the plugin's tools.
    pub fn required(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            required: true,
        }
    }

    /// A setting the plugin can do without.
    pub fn optional(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            required: false,
        }
    }
}

/// A tool as the plugin knows it: its description, and how to run it.
struct ToolEntry {
    name: &'static str,
    description: &'static str,
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

    /// Adds a tool.
    pub fn tool<T: Tool>(mut self) -> Self {
        self.tools.push(ToolEntry {
            name: T::NAME,
            description: T::DESCRIPTION,
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
                })
            })
            .collect();
        let settings: Vec<Value> = self
            .settings
            .iter()
            .map(|setting| {
                json!({
                    "name": setting.name,
                    "description": setting.description,
                    "required": setting.required,
                })
            })
            .collect();

        json!({
            "description_version": DESCRIPTION_VERSION,
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "tools": tools,
            "hosts": self.hosts,
            "settings": settings,
        })
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
        type Output = ();

        fn run(self) -> Result<(), ToolError> {
            Ok(())
        }
    }

    fn plugin() -> Plugin {
        Plugin::new("calc", "Calculator", "1.0.0", "Arithmetic.")
            .host("api.example.com")
            .setting(Setting::required("precision", "Digits."))
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
