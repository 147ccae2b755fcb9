#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmesh_fuzz::bulk(data));
