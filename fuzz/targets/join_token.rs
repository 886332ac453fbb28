//! AFL++ entry of fuzz target `join_token` (see `src/` for what it drives; `scripts/fuzz.sh join_token`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::join_token::run(data));
}
