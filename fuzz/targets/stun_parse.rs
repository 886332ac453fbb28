//! AFL++ entry of fuzz target `stun_parse` (see `src/` for what it drives; `scripts/fuzz.sh stun_parse`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_turn::stun::fuzz_parse(data));
}
