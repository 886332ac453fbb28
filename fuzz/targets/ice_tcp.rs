//! AFL++ entry of fuzz target `ice_tcp` (see `src/` for what it drives; `scripts/fuzz.sh ice_tcp`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::ice_tcp::run(data));
}
