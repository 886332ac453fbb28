//! Target `ice_tcp`: an ICE-TCP connection's byte stream through the SFU's RFC 4571 framing and
//! first-frame routing (`consulta_sfu::fuzz_ice_tcp`), arriving in segments of a fuzzed size.

pub fn run(data: &[u8]) {
    let (chunk, stream) = data.split_first().unwrap_or((&0, &[]));
    consulta_sfu::fuzz_ice_tcp(stream, usize::from(*chunk) * 7 + 1);
}
