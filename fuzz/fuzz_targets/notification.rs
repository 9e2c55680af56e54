#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // First two bytes: status; then the content type and the body, split at the first 0.
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let rest = &data[2..];
    let (content_type, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"application/json"[..], rest),
    };
    tower_async_request::__fuzz::notification(content_type, body, status);
});
