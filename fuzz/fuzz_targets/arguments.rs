//! A schema from a plugin and arguments from a language model, split at the first NUL byte:
//! compiling never fetches or panics, and checking never panics nor quotes a string value.

#![no_main]

use keyhole::description::{check_arguments, compile_schema};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let (Some(schema), Some(arguments)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(schema), Ok(arguments)) = (
        serde_json::from_slice::<Value>(schema),
        serde_json::from_slice::<Value>(arguments),
    ) else {
        return;
    };
    let Ok(validator) = compile_schema(&schema) else {
        return;
    };
    if let Err(problems) = check_arguments(&validator, &arguments) {
        assert!(problems.len() <= 10);
    }
});
