//! AFL++ entry of fuzz target `worker_rtp` (see `src/` for what it drives; `scripts/fuzz.sh worker_rtp`).
fn main() {
    afl::fuzz!(|data: &[u8]| consulta_fuzz::worker_rtp::run(data));
}
