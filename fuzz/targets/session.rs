//! AFL++ entry of fuzz target `session` (see `src/` for what it drives; `scripts/fuzz.sh session`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::session::run(data));
}
