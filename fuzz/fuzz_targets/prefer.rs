#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_async_request::__fuzz::prefer(data));
