//! The VP9 payload descriptor (RFC 9628) as far as forwarding spatial layers needs it: which
//! spatial layer a packet carries, whether it begins or ends that layer's frame, and whether it
//! begins a keyframe picture. A browser sending scalable VP9 (the SDK asks Chromium for
//! `L3T3_KEY`: three spatial layers of one stream, the higher ones predicted from the lower only
//! at keyframes) sends each picture as its layers' frames in order, lowest first; an SFU forwards
//! a subscriber the layers up to its own (see [`crate::layers::Switch::admit_spatial`]).

/// What the descriptor of one VP9 packet says about its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Layer {
    /// Spatial layer (SID), 0 the lowest.
    pub sid: u8,
    /// The packet begins a frame of its layer (B).
    pub begin: bool,
    /// The packet ends a frame of its layer (E).
    pub end: bool,
    /// The packet begins a keyframe picture: layer 0, not inter-picture predicted (P = 0).
    pub keyframe: bool,
    /// How many spatial layers the stream has, from the scalability structure a keyframe's
    /// first packet carries (V = 1); None when the packet has none.
    pub layers: Option<u8>,
}

/// Parses the descriptor at the start of `payload`; None when it carries no layer indices
/// (L = 0: a stream without spatial layers) or is too short.
pub fn vp9_layer(payload: &[u8]) -> Option<Vp9Layer> {
    let b0 = *payload.first()?;
    // I|P|L|F|B|E|V|Z
    if b0 & 0x20 == 0 {
        return None;
    }
    let mut at = 1;
    if b0 & 0x80 != 0 {
        // Picture id: 7 bits, or 15 when M is set.
        let m = *payload.get(at)?;
        at += if m & 0x80 != 0 { 2 } else { 1 };
    }
    // TID(3)|U|SID(3)|D
    let layer = *payload.get(at)?;
    let sid = (layer >> 1) & 0x07;
    let begin = b0 & 0x08 != 0;
    at += 1;
    let flexible = b0 & 0x10 != 0;
    let predicted = b0 & 0x40 != 0;
    if !flexible {
        at += 1; // TL0PICIDX
    } else if predicted {
        // Up to three reference indices, each with N set when another follows.
        for _ in 0..3 {
            let more = payload.get(at).is_some_and(|d| d & 0x01 != 0);
            at += 1;
            if !more {
                break;
            }
        }
    }
    // The scalability structure begins with N_S (spatial layers less one) in its top 3 bits.
    let layers = (b0 & 0x02 != 0)
        .then(|| payload.get(at).map(|ss| (ss >> 5) + 1))
        .flatten();
    Some(Vp9Layer {
        sid,
        begin,
        end: b0 & 0x04 != 0,
        keyframe: sid == 0 && begin && !predicted,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_spatial_layer_and_frame_bounds() {
        // I L B, 15-bit picture id, TID 0 SID 0: a keyframe's start (P = 0).
        let key = [0xA8, 0x81, 0x23, 0x00, 0x07];
        assert_eq!(
            vp9_layer(&key),
            Some(Vp9Layer {
                sid: 0,
                begin: true,
                end: false,
                keyframe: true,
                layers: None
            })
        );
        // The same with V: TL0PICIDX, then the scalability structure, N_S = 2 (three layers).
        let ss = [0xAA, 0x81, 0x23, 0x00, 0x07, (2 << 5) | 0x10, 0x01];
        assert_eq!(vp9_layer(&ss).unwrap().layers, Some(3));
        // Flexible mode, inter-predicted: reference indices before the structure.
        let flex = [0xFA, 0x05, 0x00, 0x03, 0x02, 1 << 5];
        assert_eq!(vp9_layer(&flex).unwrap().layers, Some(2));
        // I P L E, 7-bit picture id, TID 2 SID 2 D: the end of an upper layer's frame.
        let top = [0xE4, 0x05, (2 << 5) | (2 << 1) | 1, 0x00];
        assert_eq!(
            vp9_layer(&top),
            Some(Vp9Layer {
                sid: 2,
                begin: false,
                end: true,
                keyframe: false,
                layers: None
            })
        );
        // The upper layers of a keyframe picture are not inter-picture predicted either, but
        // only layer 0 begins the picture.
        let upper = [0xA8, 0x05, 1 << 1, 0x00];
        assert!(!vp9_layer(&upper).unwrap().keyframe);
        // Inter-predicted layer 0: not a keyframe.
        assert!(!vp9_layer(&[0xE8, 0x05, 0x00]).unwrap().keyframe);
        // No layer indices (L = 0): a stream without spatial layers.
        assert_eq!(vp9_layer(&[0x88, 0x05, 0x00]), None);
        // Short or empty payloads never panic.
        for len in 0..8 {
            let _ = vp9_layer(&[0xFF; 8][..len]);
            let _ = vp9_layer(&[0xA0; 8][..len]);
            let _ = vp9_layer(&[0xBA; 8][..len]);
        }
        assert_eq!(vp9_layer(&[0xA0, 0x85]), None);
    }
}
