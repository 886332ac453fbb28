//! AFL++ entry of fuzz target `turn_server` (see `src/` for what it drives; `scripts/fuzz.sh turn_server`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::turn_server::run(data));
}
