//! AFL++ entry of fuzz target `webm_scan` (see `src/` for what it drives; `scripts/fuzz.sh webm_scan`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::webm_scan::run(data));
}
