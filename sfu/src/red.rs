//! Redundant audio (RFC 2198 RED) on the forwarding path: Chromium wraps each Opus packet with a
//! copy of the previous one when RED is negotiated, so a subscriber on a lossy downlink recovers
//! an isolated loss without a retransmission round trip (audio first, issue 21). The SFU forwards
//! RED untouched to subscribers that negotiated it; to one that did not (and to the recorder),
//! it sends the primary block alone under the plain Opus payload type, and to such a subscriber
//! the newest redundant block too, as a second copy of the packet before (Firefox has no RED:
//! without the copy a lost packet is a concealed one). Pure functions only.

/// Where the primary block of a RED payload starts, or `None` when the payload is not valid
/// RED (a truncated header, or block lengths that overrun the payload).
///
/// Layout: a 4-byte header `F=1 | PT(7) | timestamp offset(14) | length(10)` per redundant block,
/// then a 1-byte header `F=0 | PT(7)` for the primary, then the redundant blocks' data in order,
/// then the primary's.
pub fn primary_offset(payload: &[u8]) -> Option<usize> {
    walk(payload).map(|w| w.primary)
}

/// The newest redundant block of a RED payload (the one just before the primary: Chromium sends
/// one, the frame before the primary), as (its timestamp offset back from the packet's, the byte
/// range of its data); `None` when there is none, it is empty, it is not of the primary's payload
/// type (it could not go out under the same one), or the payload is not valid RED. A subscriber
/// without RED gets it as a copy of the packet before (`Forwarder::set_copies`).
pub fn newest_redundant(payload: &[u8]) -> Option<(u32, std::ops::Range<usize>)> {
    let w = walk(payload)?;
    let (pt, offset, range) = w.newest?;
    (pt == w.primary_pt && !range.is_empty() && offset > 0).then_some((offset, range))
}

/// What the headers of a RED payload say.
struct Walk {
    /// Where the primary block starts (within the payload).
    primary: usize,
    primary_pt: u8,
    /// The last redundant block's payload type, timestamp offset and data.
    newest: Option<(u8, u32, std::ops::Range<usize>)>,
}

fn walk(payload: &[u8]) -> Option<Walk> {
    let mut at = 0usize;
    let mut redundant = 0usize;
    let mut newest = None;
    loop {
        let first = *payload.get(at)?;
        if first & 0x80 == 0 {
            at += 1;
            break;
        }
        let hdr = payload.get(at..at + 4)?;
        let len = (usize::from(hdr[2] & 0x03) << 8) | usize::from(hdr[3]);
        let offset = (u32::from(hdr[1]) << 6) | u32::from(hdr[2] >> 2);
        newest = Some((hdr[0] & 0x7F, offset, redundant..redundant + len));
        redundant += len;
        at += 4;
    }
    let primary = at + redundant;
    (primary <= payload.len()).then(|| Walk {
        primary,
        primary_pt: payload[at - 1] & 0x7F,
        newest: newest.map(|(pt, offset, r)| (pt, offset, at + r.start..at + r.end)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload with the given redundant blocks (pt, ts offset, data) and primary.
    fn red(redundant: &[(u8, u16, &[u8])], primary_pt: u8, primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (pt, ts, data) in redundant {
            let len = data.len() as u16;
            out.push(0x80 | pt);
            out.push((ts >> 6) as u8);
            out.push((((ts & 0x3F) << 2) as u8) | (len >> 8) as u8);
            out.push(len as u8);
        }
        out.push(primary_pt & 0x7F);
        for (_, _, data) in redundant {
            out.extend_from_slice(data);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn finds_the_primary_after_one_redundant_block() {
        let p = red(&[(111, 960, &[1, 2, 3])], 111, &[9, 8, 7, 6]);
        let off = primary_offset(&p).unwrap();
        assert_eq!(&p[off..], &[9, 8, 7, 6]);
    }

    #[test]
    fn finds_the_primary_without_redundancy_and_after_long_blocks() {
        let p = red(&[], 111, &[5, 5]);
        assert_eq!(primary_offset(&p), Some(1));
        let long = vec![0xAA; 700];
        let p = red(&[(111, 1920, &long), (111, 960, &[1])], 111, &[4]);
        let off = primary_offset(&p).unwrap();
        assert_eq!(&p[off..], &[4]);
    }

    #[test]
    fn the_newest_redundant_block_is_the_one_before_the_primary() {
        let p = red(&[(111, 960, &[1, 2, 3])], 111, &[9, 8, 7, 6]);
        let (offset, range) = newest_redundant(&p).unwrap();
        assert_eq!(offset, 960);
        assert_eq!(&p[range], &[1, 2, 3]);
        // Two blocks: the later (nearer) one.
        let p = red(&[(111, 1920, &[5; 10]), (111, 960, &[6; 7])], 111, &[4]);
        let (offset, range) = newest_redundant(&p).unwrap();
        assert_eq!(offset, 960);
        assert_eq!(&p[range], &[6; 7]);
        // None, an empty one, one at offset 0, or a truncated payload: nothing to copy.
        assert_eq!(newest_redundant(&red(&[], 111, &[5])), None);
        assert_eq!(newest_redundant(&red(&[(111, 960, &[])], 111, &[5])), None);
        assert_eq!(newest_redundant(&red(&[(111, 0, &[1])], 111, &[5])), None);
        // Of another payload type than the primary's.
        assert_eq!(newest_redundant(&red(&[(0, 960, &[1])], 111, &[5])), None);
        let mut p = red(&[(111, 960, &[1, 2, 3])], 111, &[]);
        p.truncate(6);
        assert_eq!(newest_redundant(&p), None);
    }

    #[test]
    fn refuses_truncated_or_overrunning_payloads() {
        assert_eq!(primary_offset(&[]), None);
        assert_eq!(primary_offset(&[0x80 | 111, 0, 0]), None);
        let mut p = red(&[(111, 960, &[1, 2, 3])], 111, &[]);
        p.truncate(6); // the redundant block's data is cut
        assert_eq!(primary_offset(&p), None);
        // An empty primary is valid (the primary may be a DTX frame).
        let p = red(&[(111, 960, &[1])], 111, &[]);
        assert_eq!(primary_offset(&p), Some(p.len()));
    }
}
