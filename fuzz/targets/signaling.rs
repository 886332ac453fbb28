//! AFL++ entry of fuzz target `signaling` (see `src/` for what it drives; `scripts/fuzz.sh signaling`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::signaling::run(data));
}
