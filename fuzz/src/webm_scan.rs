//! Target `webm_scan`: the recorder's WebM reader (`scan`, run on a spooled file after a crash)
//! and the in-place Duration patch over arbitrary bytes. Oracle: the scan never claims more
//! complete bytes than the file has, and a patch never grows the file.

use std::io::Cursor;

use consulta_recorder::scan::{patch_duration, scan};

pub fn run(data: &[u8]) {
    let mut f = Cursor::new(data.to_vec());
    let s = scan(&mut f).expect("reading memory never fails");
    assert!(s.complete_len <= data.len() as u64);
    let _ = patch_duration(&mut f, &s, s.duration_ms);
    assert_eq!(
        f.get_ref().len(),
        data.len(),
        "a patch stays inside the file"
    );
}
