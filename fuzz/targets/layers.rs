//! AFL++ entry of fuzz target `layers` (see `src/` for what it drives; `scripts/fuzz.sh layers`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::layers::run(data));
}
