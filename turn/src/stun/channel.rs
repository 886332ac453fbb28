//! ChannelData (RFC 8656 §12.4), stream framing (§12.5), and the fuzz entry point.

use super::{be16, padded, Message, ParseError, CHANNEL_HEADER_LEN, HEADER_LEN};

/// A ChannelData message: a channel number and application data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub number: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses one ChannelData message. Trailing bytes after the data (padding) are ignored.
    pub fn parse(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < CHANNEL_HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        let number = be16(b, 0);
        if !(0x4000..=0x7FFF).contains(&number) {
            return Err(ParseError::NotChannelData);
        }
        let len = be16(b, 2) as usize;
        if b.len() - CHANNEL_HEADER_LEN < len {
            return Err(ParseError::BadLength);
        }
        Ok(ChannelData {
            number,
            data: &b[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len],
        })
    }
}

/// Writes a ChannelData message into `buf` (cleared first). Streams (TCP/TLS) need `pad` so the
/// next frame starts on a 4-byte boundary. Data beyond 65535 bytes is cut.
pub fn write_channel_data(buf: &mut Vec<u8>, number: u16, data: &[u8], pad: bool) {
    let data = &data[..data.len().min(0xFFFF)];
    buf.clear();
    buf.extend_from_slice(&number.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u16).to_be_bytes());
    buf.extend_from_slice(data);
    if pad {
        let p = padded(data.len()) - data.len();
        buf.extend_from_slice(&[0u8; 3][..p]);
    }
}

/// Stream framing: the length of the frame at the start of `b`, once its 4-byte header is
/// there. `Ok(None)`: need more bytes. `Err`: the stream is not STUN/TURN and must be closed.
/// STUN frames are `20 + length`; ChannelData frames are padded to 4.
pub fn frame_len(b: &[u8]) -> Result<Option<usize>, ParseError> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = be16(b, 2) as usize;
    match b[0] >> 6 {
        0b00 => {
            if !len.is_multiple_of(4) {
                return Err(ParseError::BadLength);
            }
            Ok(Some(HEADER_LEN + len))
        }
        0b01 => Ok(Some(CHANNEL_HEADER_LEN + padded(len))),
        _ => Err(ParseError::NotChannelData),
    }
}

/// A `cargo fuzz` target body: runs every parser over `data`. Must never panic.
///
/// ```ignore
/// fuzz_target!(|data: &[u8]| consulta_turn::stun::fuzz_parse(data));
/// ```
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(m) = Message::parse(data) {
        let _ = m.verify_integrity(b"0123456789abcdef");
        let _ = m.attrs.xor_peers.iter().count();
        let _ = m.integrity_kind();
    }
    let _ = ChannelData::parse(data);
    let mut at = 0;
    while let Ok(Some(n)) = frame_len(&data[at..]) {
        if data.len() - at < n {
            break;
        }
        let frame = &data[at..at + n];
        let _ = Message::parse(frame);
        let _ = ChannelData::parse(frame);
        at += n;
    }
}
