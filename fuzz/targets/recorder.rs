//! AFL++ entry of fuzz target `recorder` (see `src/` for what it drives; `scripts/fuzz.sh recorder`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::recorder::run(data));
}
