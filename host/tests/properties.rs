//! Property tests over the parsers that take hostile input: a plugin's self-description, the
//! arguments a language model wrote, and token answers from providers chosen by plugin authors.
//!
//! They stand in for `cargo fuzz`, which needs a nightly toolchain that this project's machines
//! do not have. Each property runs a bounded number of cases in every `cargo test`; run them
//! longer with, for example:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release -p keyhole --test properties
//! ```

use keyhole::description::{Description, check_arguments, compile_schema};
use keyhole::oauth::token_response::parse_token_response;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, nested a few levels, with strings that include odd Unicode.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_$]{0,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A valid description, to mutate.
fn valid_description() -> Value {
    json!({
        "description_version": 1,
        "id": "weather",
        "name": "Weather",
        "version": "0.1.0",
        "description": "Weather.",
        "tools": [{
            "name": "current_weather",
            "description": "Now.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"]
            }
        }],
        "hosts": ["api.open-meteo.com"],
        "settings": [{"name": "units", "description": "Units.", "required": false}]
    })
}

/// One change to a JSON document: a field at some path replaced, removed or added.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Vec<String>, Value),
    Remove(Vec<String>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop_oneof![
        Just("id"),
        Just("name"),
        Just("version"),
        Just("description_version"),
        Just("tools"),
        Just("hosts"),
        Just("settings"),
        Just("oauth"),
        Just("scratch"),
        Just("0"),
        Just("parameters"),
        Just("properties"),
        Just("$ref"),
        Just("required"),
        Just("api_hosts"),
        Just("token_url"),
    ];
    let path = prop::collection::vec(field.prop_map(str::to_owned), 1..4);
    prop_oneof![
        (path.clone(), any_json()).prop_map(|(path, value)| Mutation::Replace(path, value)),
        path.prop_map(Mutation::Remove),
    ]
}

fn apply(document: &mut Value, mutation: &Mutation) {
    let (path, value) = match mutation {
        Mutation::Replace(path, value) => (path, Some(value)),
        Mutation::Remove(path) => (path, None),
    };
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = document;
    for key in parents {
        node = match node {
            Value::Object(map) => map.entry(key.clone()).or_insert_with(|| json!({})),
            Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(item) => item,
                None => return,
            },
            _ => return,
        };
    }
    match (node, value) {
        (Value::Object(map), Some(value)) => drop(map.insert(last.clone(), value.clone())),
        (Value::Object(map), None) => drop(map.remove(last)),
        _ => {}
    }
}

fn id_is_valid(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=31).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn tool_name_is_valid(name: &str) -> bool {
    (1..=30).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

// proptest's default of 256 cases a property, or `PROPTEST_CASES`.
proptest! {
    /// Whatever a plugin answers from `describe`, parsing it never panics.
    #[test]
    fn any_text_parses_or_is_refused(text in "\\PC{0,200}") {
        let _ = Description::parse(&text);
    }

    /// A mutated valid description is either refused, or accepted with every invariant the
    /// host relies on intact, and then its argument schemas compile without fetching anything.
    #[test]
    fn mutated_descriptions_keep_their_invariants(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut document = valid_description();
        for mutation in &mutations {
            apply(&mut document, mutation);
        }
        if let Ok(description) = Description::parse(&document.to_string()) {
            prop_assert!(id_is_valid(&description.id), "{}", description.id);
            prop_assert!(!description.tools.is_empty());
            let mut names: Vec<&str> = description.tools.iter().map(|t| t.name.as_str()).collect();
            prop_assert!(names.iter().all(|name| tool_name_is_valid(name)), "{names:?}");
            names.sort_unstable();
            names.dedup();
            prop_assert_eq!(names.len(), description.tools.len(), "tool names are unique");
            prop_assert!(description.argument_validators().is_ok());
        }
    }

    /// Arguments of any shape are checked without panicking, and a problem never quotes the
    /// value it is about.
    #[test]
    fn any_arguments_are_checked_without_quoting_them(arguments in any_json()) {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "days": {"type": "integer", "minimum": 1, "maximum": 16},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}}
            },
            "required": ["city"],
            "additionalProperties": false
        });
        let validator = compile_schema(&schema).expect("the schema compiles");
        if let Err(problems) = check_arguments(&validator, &arguments) {
            prop_assert!(!problems.is_empty() && problems.len() <= 10);
            for problem in problems {
                if let Some(text) = arguments.get("city").and_then(Value::as_str)
                    && text.len() >= 6
                {
                    prop_assert!(!problem.message.contains(text), "{}", problem.message);
                }
            }
        }
    }

    /// Arguments built to match the schema are accepted; with the city's type broken they are
    /// refused at `/city`.
    #[test]
    fn matching_arguments_pass_and_a_wrong_type_is_located(city in "\\PC{1,40}", days in 1i64..=16) {
        let schema = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"]
        });
        let validator = compile_schema(&schema).expect("the schema compiles");
        let matching = json!({"city": city, "days": days});
        prop_assert!(check_arguments(&validator, &matching).is_ok());
        let problems = check_arguments(&validator, &json!({"city": days})).unwrap_err();
        prop_assert_eq!(problems[0].path.as_str(), "/city");
    }

    /// A hostile schema, with references to anywhere, compiles or is refused, and never
    /// reaches the network: a remote `$ref` cannot compile.
    #[test]
    fn hostile_schemas_never_fetch(schema in any_json(), host in "[a-z]{1,12}") {
        let _ = compile_schema(&schema);
        let remote = json!({"$ref": format!("https://{host}.example/schema.json")});
        prop_assert!(compile_schema(&remote).is_err());
        let nested = json!({"properties": {"x": {"$ref": format!("http://{host}.test/s#/a")}}});
        prop_assert!(compile_schema(&nested).is_err());
    }

    /// Any answer from a token endpoint parses or is refused without panicking, and an error
    /// never quotes the access or refresh token the body carried.
    #[test]
    fn token_answers_never_panic_nor_leak_tokens(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(500), 100u16..600],
        json_type in any::<bool>(),
        fields in prop::collection::btree_map(
            prop_oneof![
                Just("access_token".to_owned()), Just("refresh_token".to_owned()),
                Just("error".to_owned()), Just("error_description".to_owned()),
                Just("expires_in".to_owned()), Just("token_type".to_owned()),
                Just("ok".to_owned()), Just("authed_user".to_owned()), "[a-z_]{1,10}",
            ],
            any_json(),
            0..6,
        ),
        token_path in prop_oneof![Just(String::new()), Just("authed_user".to_owned())],
    ) {
        let secret = "tok-3f9a1c77d2";
        let mut body: serde_json::Map<String, Value> = fields.into_iter().collect();
        if body.contains_key("access_token") {
            body.insert("access_token".to_owned(), json!(secret));
        }
        if body.contains_key("refresh_token") {
            body.insert("refresh_token".to_owned(), json!(format!("r{secret}")));
        }
        let (content_type, bytes) = if json_type {
            ("application/json", serde_json::to_vec(&body).unwrap())
        } else {
            let form: Vec<(String, String)> = body
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect();
            let encoded = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            ("application/x-www-form-urlencoded", encoded.into_bytes())
        };

        match parse_token_response(status, Some(content_type), &bytes, &token_path) {
            Ok(tokens) => prop_assert!(!tokens.access_token.is_empty()),
            Err(err) => prop_assert!(!err.to_string().contains(secret), "{err}"),
        }
    }

    /// Raw bytes under any content type never panic the token parser.
    #[test]
    fn raw_token_bodies_never_panic(
        status in 0u16..1000,
        content_type in prop::option::of("\\PC{0,40}"),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = parse_token_response(status, content_type.as_deref(), &body, "");
        let _ = parse_token_response(status, content_type.as_deref(), &body, "authed_user");
    }
}
