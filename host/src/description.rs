//! A plugin's self-description: what `tools.describe` returns, validated at upload.
//!
//! The description is a versioned JSON document so that it can grow (OAuth, secret settings)
//! without breaking plugins already installed: the host keeps accepting every
//! `description_version` it ever accepted. Its JSON Schema is published in
//! `wit/description.schema.json` and is the first check; the rules a schema cannot express
//! (unique names, compilable argument schemas) follow.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use jsonschema::{Retrieve, Uri, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
        }

        let mut settings = BTreeSet::new();
        for setting in &self.settings {
            if !settings.insert(&setting.name) {
                return invalid(format!("two settings are named `{}`", setting.name));
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
            message: err.masked_with("the value").to_string(),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
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
}
