//! An MSB-first bit reader over untrusted bytes: every read is checked and returns `None` past
//! the end, so a truncated or hostile header ends parsing instead of panicking.

pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    /// Reads `n` (at most 32) bits as an unsigned big-endian number.
    pub fn bits(&mut self, n: u32) -> Option<u32> {
        if n > 32 {
            return None;
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        u32::try_from(v).ok()
    }

    /// Unsigned Exp-Golomb (H.264 §9.1). Codes longer than 32 bits are rejected: no valid
    /// syntax element needs them, and they would overflow.
    pub fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0u32;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        let v = (1u64 << zeros) - 1 + u64::from(rest);
        u32::try_from(v).ok()
    }

    /// Signed Exp-Golomb: 1, 2, 3, 4 … map to 1, -1, 2, -2 …
    pub fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 00101 → ue 0,1,2,3,4
        let d = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&d);
        assert_eq!(r.ue(), Some(0));
        assert_eq!(r.ue(), Some(1));
        assert_eq!(r.ue(), Some(2));
        assert_eq!(r.ue(), Some(3));
        assert_eq!(r.ue(), Some(4));
        let d = [0b0100_1100, 0b1000_0000];
        let mut r = BitReader::new(&d);
        assert_eq!(r.se(), Some(1)); // 010
        assert_eq!(r.se(), Some(-1)); // 011
        assert_eq!(r.se(), Some(2)); // 00100
    }

    #[test]
    fn runs_out_cleanly() {
        let mut r = BitReader::new(&[0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(r.ue(), None);
        let mut r = BitReader::new(&[0xFF]);
        assert_eq!(r.bits(8), Some(0xFF));
        assert_eq!(r.bit(), None);
        assert_eq!(r.bits(33), None);
    }
}
