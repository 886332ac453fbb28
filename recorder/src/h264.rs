//! H.264 parameter sets: the picture size from an SPS, and the `avcC` record Matroska wants as
//! CodecPrivate for `V_MPEG4/ISO/AVC`.
//!
//! Only the SPS fields in front of the frame size and cropping are decoded; VUI and everything
//! after it is ignored. Parsing happens once per track (when its parameter sets are frozen), so
//! unescaping into a fresh buffer is fine here.

use crate::bits::BitReader;

/// What the recorder needs from a sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub chroma_format_idc: u32,
    pub bit_depth_luma_minus8: u32,
    pub bit_depth_chroma_minus8: u32,
    /// Displayed size, after frame cropping.
    pub width: u32,
    pub height: u32,
}

/// Profiles whose SPS carries chroma format, bit depths and scaling matrices (H.264 §7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Removes emulation-prevention bytes (the 0x03 in 00 00 03), turning a NAL payload into RBSP.
pub fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let mut last: i64 = 8;
    let mut next: i64 = 8;
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Parses an SPS NAL unit (including its one-byte NAL header).
pub fn parse_sps(nal: &[u8]) -> Option<Sps> {
    let header = *nal.first()?;
    if header & 0x1F != 7 {
        return None;
    }
    let rbsp = unescape(nal.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = u8::try_from(r.bits(8)?).ok()?;
    let constraint_flags = u8::try_from(r.bits(8)?).ok()?;
    let level_idc = u8::try_from(r.bits(8)?).ok()?;
    let _sps_id = r.ue()?;

    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    let mut bit_depth_luma_minus8 = 0;
    let mut bit_depth_chroma_minus8 = 0;
    if has_chroma_info(profile_idc) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None;
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()? == 1;
        }
        bit_depth_luma_minus8 = r.ue()?;
        bit_depth_chroma_minus8 = r.ue()?;
        let _qpprime_y_zero_transform_bypass = r.bit()?;
        if r.bit()? == 1 {
            // seq_scaling_matrix_present: 6 4x4 lists, then 2 (or 6 for 4:4:4) 8x8 lists.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }

    let _log2_max_frame_num_minus4 = r.ue()?;
    match r.ue()? {
        0 => {
            let _log2_max_poc_lsb_minus4 = r.ue()?;
        }
        1 => {
            let _delta_pic_order_always_zero = r.bit()?;
            let _offset_for_non_ref_pic = r.se()?;
            let _offset_for_top_to_bottom_field = r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                let _offset_for_ref_frame = r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    let _max_num_ref_frames = r.ue()?;
    let _gaps_in_frame_num_allowed = r.bit()?;
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.bit()? == 1;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.bit()?;
    }
    let _direct_8x8_inference = r.bit()?;
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        crop_l = u64::from(r.ue()?);
        crop_r = u64::from(r.ue()?);
        crop_t = u64::from(r.ue()?);
        crop_b = u64::from(r.ue()?);
    }

    // §7.4.2.1.1: crop offsets are in chroma sample units; fields double the vertical unit.
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_w, sub_h) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let crop_unit_x = sub_w;
    let crop_unit_y = sub_h * field_factor;

    let coded_w = width_mbs.checked_mul(16)?;
    let coded_h = height_map_units.checked_mul(16 * field_factor)?;
    let width = coded_w.checked_sub(crop_unit_x * crop_l.checked_add(crop_r)?)?;
    let height = coded_h.checked_sub(crop_unit_y * crop_t.checked_add(crop_b)?)?;
    if width == 0 || height == 0 {
        return None;
    }
    Some(Sps {
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc,
        bit_depth_luma_minus8,
        bit_depth_chroma_minus8,
        width: u32::try_from(width).ok()?,
        height: u32::try_from(height).ok()?,
    })
}

/// Builds an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) from one SPS and, if
/// known, one PPS. NAL lengths in blocks are 4 bytes (lengthSizeMinusOne = 3). An empty `pps`
/// gives a record with no PPS, which is valid: the recorder keeps parameter sets in-band.
pub fn avcc(sps: &[u8], pps: &[u8]) -> Option<Vec<u8>> {
    let parsed = parse_sps(sps);
    let profile = *sps.get(1)?;
    let compat = *sps.get(2)?;
    let level = *sps.get(3)?;
    let sps_len = u16::try_from(sps.len()).ok()?;
    let mut out = Vec::with_capacity(16 + sps.len() + pps.len());
    out.push(1); // configurationVersion
    out.push(profile);
    out.push(compat);
    out.push(level);
    out.push(0xFC | 3); // reserved 6 bits + lengthSizeMinusOne
    out.push(0xE0 | 1); // reserved 3 bits + numOfSequenceParameterSets
    out.extend_from_slice(&sps_len.to_be_bytes());
    out.extend_from_slice(sps);
    if pps.is_empty() {
        out.push(0);
    } else {
        let pps_len = u16::try_from(pps.len()).ok()?;
        out.push(1);
        out.extend_from_slice(&pps_len.to_be_bytes());
        out.extend_from_slice(pps);
    }
    // The high profiles append chroma format and bit depths (and SPS extensions, none here).
    if matches!(profile, 100 | 110 | 122 | 144) {
        let (chroma, luma_d, chroma_d) = parsed.map_or((1, 0, 0), |s| {
            (
                s.chroma_format_idc,
                s.bit_depth_luma_minus8,
                s.bit_depth_chroma_minus8,
            )
        });
        out.push(0xFC | (chroma & 0x03) as u8);
        out.push(0xF8 | (luma_d & 0x07) as u8);
        out.push(0xF8 | (chroma_d & 0x07) as u8);
        out.push(0);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264, `-profile:v baseline`, 1280x720 (constrained baseline: constraint_set1).
    const SPS_BASELINE_720: [u8; 25] = [
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    const PPS_BASELINE_720: [u8; 5] = [0x68, 0xcb, 0x83, 0xcb, 0x20];
    /// x264, `-profile:v high`, 1920x1080: coded as 1088 lines and cropped by 8.
    const SPS_HIGH_1080: [u8; 27] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
    ];
    /// x264, `-profile:v high444 -pix_fmt yuv444p`, 350x198: 4:4:4 crops in luma samples.
    const SPS_HIGH444_350X198: [u8; 26] = [
        0x67, 0xf4, 0x00, 0x0d, 0x91, 0x9b, 0x28, 0x2c, 0x37, 0xdc, 0x5e, 0x02, 0x20, 0x00, 0x00,
        0x03, 0x00, 0x20, 0x00, 0x00, 0x07, 0x81, 0xe2, 0x85, 0x32, 0xc0,
    ];

    /// Test-side bit writer, to build SPSs with fields x264 never emits (scaling matrices).
    struct BitWriter {
        out: Vec<u8>,
        n: u32,
    }
    impl BitWriter {
        fn new() -> Self {
            Self {
                out: Vec::new(),
                n: 0,
            }
        }
        fn bit(&mut self, b: u32) {
            if self.n.is_multiple_of(8) {
                self.out.push(0);
            }
            if b != 0 {
                *self.out.last_mut().unwrap() |= 0x80 >> (self.n % 8);
            }
            self.n += 1;
        }
        fn bits(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1);
            }
        }
        fn ue(&mut self, v: u32) {
            let x = v + 1;
            let len = 32 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }
        fn se(&mut self, v: i32) {
            self.ue(if v > 0 {
                (2 * v - 1) as u32
            } else {
                (-2 * v) as u32
            });
        }
    }

    #[test]
    fn baseline_720p() {
        let s = parse_sps(&SPS_BASELINE_720).unwrap();
        assert_eq!((s.width, s.height), (1280, 720));
        assert_eq!(s.profile_idc, 66);
        assert_eq!(s.level_idc, 31);
    }

    #[test]
    fn high_1080p_cropped() {
        let s = parse_sps(&SPS_HIGH_1080).unwrap();
        assert_eq!((s.width, s.height), (1920, 1080));
        assert_eq!(s.chroma_format_idc, 1);
    }

    #[test]
    fn high444_odd_size() {
        let s = parse_sps(&SPS_HIGH444_350X198).unwrap();
        assert_eq!(s.chroma_format_idc, 3);
        assert_eq!((s.width, s.height), (350, 198));
    }

    #[test]
    fn scaling_matrices_and_poc_type_1_are_skipped() {
        let mut w = BitWriter::new();
        w.bits(100, 8); // high
        w.bits(0, 8);
        w.bits(40, 8);
        w.ue(0); // sps id
        w.ue(1); // 4:2:0
        w.ue(2); // luma 10-bit
        w.ue(2);
        w.bit(0);
        w.bit(1); // seq_scaling_matrix_present
        for i in 0..8 {
            if i % 3 == 0 {
                w.bit(0);
                continue;
            }
            w.bit(1);
            let size = if i < 6 { 16 } else { 64 };
            if i == 4 {
                w.se(-8); // next = 0 on the first entry: "use default", the list ends there
                continue;
            }
            for j in 0..size {
                w.se(if j % 2 == 0 { 3 } else { -2 });
            }
        }
        w.ue(0); // log2_max_frame_num - 4
        w.ue(1); // poc type 1
        w.bit(0);
        w.se(-3);
        w.se(7);
        w.ue(3);
        w.se(1);
        w.se(-2);
        w.se(100);
        w.ue(4); // max refs
        w.bit(0);
        w.ue(79); // 1280 / 16 - 1
        w.ue(22); // field coding: (22 + 1) * 2 * 16 = 736
        w.bit(0); // frame_mbs_only = 0
        w.bit(1);
        w.bit(1);
        w.bit(1); // cropping
        w.ue(2);
        w.ue(0);
        w.ue(1);
        w.ue(3); // vertical unit = 2 (4:2:0) * 2 (fields) = 4 → 16 lines off
        w.bit(0); // no VUI
        w.bit(1); // rbsp stop bit
        let mut nal = vec![0x67];
        nal.extend_from_slice(&w.out);
        let s = parse_sps(&nal).unwrap();
        assert_eq!((s.width, s.height), (1280 - 4, 736 - 16));
        assert_eq!(s.bit_depth_luma_minus8, 2);
    }

    #[test]
    fn emulation_prevention_is_removed() {
        assert_eq!(
            unescape(&[0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0x03, 0x00, 0x03]),
            vec![0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03]
        );
    }

    #[test]
    fn avcc_record() {
        let a = avcc(&SPS_BASELINE_720, &PPS_BASELINE_720).unwrap();
        assert_eq!(&a[..6], &[1, 0x42, 0xc0, 0x1f, 0xFF, 0xE1]);
        assert_eq!(&a[6..8], &25u16.to_be_bytes());
        assert_eq!(&a[8..33], &SPS_BASELINE_720);
        assert_eq!(a[33], 1);
        assert_eq!(&a[34..36], &5u16.to_be_bytes());
        assert_eq!(&a[36..], &PPS_BASELINE_720);

        let h = avcc(&SPS_HIGH_1080, &[]).unwrap();
        // No PPS, then the high-profile trailer: 4:2:0, 8-bit, 8-bit, no SPS extensions.
        assert_eq!(&h[h.len() - 5..], &[0, 0xFD, 0xF8, 0xF8, 0]);
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert_eq!(parse_sps(&[]), None);
        assert_eq!(parse_sps(&[0x67]), None);
        assert_eq!(parse_sps(&[0x67, 0x64, 0, 0x28, 0, 0, 0]), None);
        assert_eq!(parse_sps(&[0x68, 0x42, 0, 0x1f]), None);
        assert!(avcc(&[0x67, 0x42], &[]).is_none());
    }
}
