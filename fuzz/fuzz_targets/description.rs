//! A plugin's self-description, as `describe` may answer it: parsing never panics, and what
//! is accepted keeps the invariants the host relies on.

#![no_main]

use keyhole::description::Description;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(description) = Description::parse(text) else {
        return;
    };
    let id = description.id.as_bytes();
    assert!(!id.is_empty() && id.len() <= 31, "id {:?}", description.id);
    assert!(
        id.iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'),
        "id {:?}",
        description.id
    );
    assert!(!description.tools.is_empty());
    assert!(description.argument_validators().is_ok());
});
