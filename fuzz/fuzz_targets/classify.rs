#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // First byte: flags; then the async header value and the callback URL, split at the first 0.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (async_value, callback) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"https://hooks.example.com/in"[..]),
    };
    tower_async_request::__fuzz::classify(async_value, callback, flags & 1 == 1);
});
