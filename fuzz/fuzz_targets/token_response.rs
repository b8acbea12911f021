//! A token endpoint's answer: status from the first two bytes, the content type chosen by the
//! third, the body after. Parsing never panics.

#![no_main]

use keyhole::oauth::token_response::parse_token_response;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain; charset=utf-8"),
    Some("application/json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let [high, low, kind, body @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*high, *low]) % 600;
    let content_type = CONTENT_TYPES[usize::from(*kind) % CONTENT_TYPES.len()];
    for path in ["", "authed_user"] {
        let _ = parse_token_response(status, content_type, body, path);
    }
});
