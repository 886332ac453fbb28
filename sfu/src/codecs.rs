//! Room-level video codec choice: which codec each publisher sends so that every current
//! subscriber can decode it. A pure decision, unit-tested without sockets; the router applies it
//! (`router/codecs.rs`).
//!
//! What a participant can decode is read from what it negotiated: the video codecs of its own
//! offer (browsers offer the same codecs for sending and receiving) and of its answers to the
//! server's offers. Firefox without OpenH264, for example, offers no H264 at all, while Safari
//! and hardware-encoder phones may offer only H264. A codec counts as shared only in its common
//! floor: H264 in packetization-mode 1 with the (constrained) baseline profile, VP9 and AV1 in
//! profile 0.
//!
//! A publisher's preference is the order of its first offer (the SDK puts `preferredVideoCodec`
//! first there). Its codec is the first of that order that every other participant decodes; when
//! none is, the one most of them decode (the others get `track-paused` with reason `codec`, never
//! a silent black tile). The answer keeps the order of the offer (`keep_offer_codec_order`), so
//! the browser sends with the codec it prefers.

use str0m::format::{Codec, PayloadParams};

/// The video codecs a room can choose between, in the order used when nothing else decides.
pub const VIDEO_CODECS: [Codec; 5] = [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::H265];

/// A set of video codecs (see [`VIDEO_CODECS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodecSet(u8);

fn bit(c: Codec) -> Option<u8> {
    VIDEO_CODECS.iter().position(|v| *v == c).map(|i| 1u8 << i)
}

impl CodecSet {
    pub fn insert(&mut self, c: Codec) {
        if let Some(b) = bit(c) {
            self.0 |= b;
        }
    }

    pub fn contains(&self, c: Codec) -> bool {
        bit(c).is_some_and(|b| self.0 & b != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: CodecSet) -> CodecSet {
        CodecSet(self.0 | other.0)
    }

    /// The codecs of `params` in their shareable form (see [`shareable`]).
    pub fn of<'a>(params: impl IntoIterator<Item = &'a PayloadParams>) -> CodecSet {
        let mut s = CodecSet::default();
        for p in params {
            if shareable(p) {
                s.insert(p.spec().codec);
            }
        }
        s
    }

    /// Names, for logs and messages.
    pub fn names(&self) -> Vec<&'static str> {
        VIDEO_CODECS
            .iter()
            .filter(|c| self.contains(**c))
            .map(|c| codec_name(*c))
            .collect()
    }
}

/// The codec's name as browsers write it in SDP and in `RTCRtpCodec.mimeType` (after `video/`).
pub fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::Vp8 => "VP8",
        Codec::Vp9 => "VP9",
        Codec::H264 => "H264",
        Codec::Av1 => "AV1",
        Codec::H265 => "H265",
        _ => "other",
    }
}

/// Whether these payload parameters are a codec's common floor, that any decoder of the codec
/// handles: H264 packetization-mode 1 in the baseline or constrained baseline profile (any
/// level), VP9 and AV1 profile 0, VP8 and H265 as they are.
pub fn shareable(p: &PayloadParams) -> bool {
    let spec = p.spec();
    let f = spec.format;
    match spec.codec {
        Codec::Vp8 | Codec::H265 => true,
        Codec::H264 => {
            f.packetization_mode == Some(1)
                && f.profile_level_id
                    .is_none_or(|id| (id >> 16) & 0xFF == 0x42)
        }
        Codec::Vp9 => f.profile_id.unwrap_or(0) == 0,
        Codec::Av1 => f.profile.unwrap_or(0) == 0,
        _ => false,
    }
}

/// A publisher's video codecs in its order of preference (first appearance in `params`, which
/// is the order of its offer), shareable forms only.
pub fn preference_order<'a>(params: impl IntoIterator<Item = &'a PayloadParams>) -> Vec<Codec> {
    let mut out: Vec<Codec> = Vec::new();
    for p in params {
        let c = p.spec().codec;
        if shareable(p) && bit(c).is_some() && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// What a publisher may be asked to send, best first: its first offer's order (`prefs`), less
/// what it proved it will not send (`unsendable`: left out of an offer made after being asked
/// for it). Codecs it decodes but did not offer are not asked for: str0m accepts no payload type
/// on an m-line that its first negotiation did not have.
pub fn candidates(prefs: &[Codec], unsendable: CodecSet) -> Vec<Codec> {
    prefs
        .iter()
        .copied()
        .filter(|c| !unsendable.contains(*c))
        .collect()
}

/// The video codecs of `params` (all forms), for what an offer can send.
pub fn all_of<'a>(params: impl IntoIterator<Item = &'a PayloadParams>) -> CodecSet {
    let mut s = CodecSet::default();
    for p in params {
        s.insert(p.spec().codec);
    }
    s
}

/// The codec a publisher that can send `send` (in its order of preference) should send to
/// receivers that decode `receivers` (unknown ones, empty sets, do not count): the first every
/// receiver decodes; else the one most of them decode, earlier in `send` on a tie; `None` when
/// the publisher sends no video codec we know.
pub fn choose(send: &[Codec], receivers: &[CodecSet]) -> Option<Codec> {
    let known: Vec<&CodecSet> = receivers.iter().filter(|r| !r.is_empty()).collect();
    let mut best: Option<(Codec, usize)> = None;
    for c in send {
        let n = known.iter().filter(|r| r.contains(*c)).count();
        if n == known.len() {
            return Some(*c);
        }
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((*c, n));
        }
    }
    best.map(|(c, _)| c)
}

/// Reorders the payload types of every video m-line of `sdp` so that `first` (a codec's payload
/// types, best first) lead: the browser sends with the first codec of the answer it is given.
/// Other payload types keep their order; lines other than video `m=` lines are untouched.
pub fn put_first(sdp: &str, first: &[u8]) -> String {
    sort_payload_types(sdp, |_, media, pt| {
        (media == "video")
            .then(|| pt.parse::<u8>().ok())
            .flatten()
            .and_then(|n| first.iter().position(|f| *f == n))
            .unwrap_or(usize::MAX)
    })
}

/// Orders each answered m-line's payload types as the offer ordered them: the browser sends with
/// the first codec of the answer, so this keeps the client's preferred codec (str0m answers in its
/// own configured order).
pub(crate) fn keep_offer_codec_order(offer: &str, answer: &str) -> String {
    let offered: Vec<Vec<&str>> = offer
        .lines()
        .filter(|l| l.starts_with("m="))
        .map(|l| l.split_whitespace().skip(3).collect())
        .collect();
    sort_payload_types(answer, |i, _, pt| {
        offered
            .get(i)
            .and_then(|prefs| prefs.iter().position(|p| *p == pt))
            .unwrap_or(usize::MAX)
    })
}

/// Stable-sorts the payload types of each m-line of `sdp` by `rank(the m-line's index, its
/// media, the payload type)`; a line whose order does not change, and every other line, is kept
/// byte for byte.
fn sort_payload_types(sdp: &str, mut rank: impl FnMut(usize, &str, &str) -> usize) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut index = 0;
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if let Some(rest) = body.strip_prefix("m=") {
            let i = index;
            index += 1;
            // media, port, protocol, then the payload types
            let mut parts: Vec<&str> = rest.split_whitespace().collect();
            if parts.len() > 3 {
                let media = parts[0];
                let before = parts.clone();
                parts[3..].sort_by_key(|pt| rank(i, media, pt));
                if parts != before {
                    out.push_str("m=");
                    out.push_str(&parts.join(" "));
                    out.push_str(&line[body.len()..]);
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::format::CodecConfig;

    fn set(codecs: &[Codec]) -> CodecSet {
        let mut s = CodecSet::default();
        for c in codecs {
            s.insert(*c);
        }
        s
    }

    #[test]
    fn the_preferred_codec_wins_when_everyone_decodes_it() {
        let send = [Codec::H264, Codec::Vp8, Codec::Vp9];
        let chrome = set(&[Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1]);
        assert_eq!(choose(&send, &[chrome]), Some(Codec::H264));
        // Alone in the room: its own preference.
        assert_eq!(choose(&send, &[]), Some(Codec::H264));
    }

    #[test]
    fn a_receiver_without_the_preferred_codec_moves_the_publisher_to_a_shared_one() {
        let send = [Codec::H264, Codec::Vp8, Codec::Vp9];
        let firefox = set(&[Codec::Vp8, Codec::Vp9, Codec::Av1]);
        let chrome = set(&[Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1]);
        assert_eq!(choose(&send, &[chrome, firefox]), Some(Codec::Vp8));
        let av1_first = [Codec::Av1, Codec::Vp9, Codec::Vp8, Codec::H264];
        let h264_only = set(&[Codec::H264]);
        assert_eq!(choose(&av1_first, &[firefox]), Some(Codec::Av1));
        // An H264-only receiver and Firefox share nothing: the one most decode, earlier first.
        assert_eq!(choose(&av1_first, &[firefox, h264_only]), Some(Codec::Av1));
        let vp9_h264 = [Codec::Vp9, Codec::H264];
        assert_eq!(
            choose(&vp9_h264, &[firefox, h264_only, chrome]),
            Some(Codec::Vp9)
        );
        assert_eq!(
            choose(&vp9_h264, &[h264_only, h264_only, firefox]),
            Some(Codec::H264)
        );
    }

    #[test]
    fn a_publisher_is_not_asked_again_for_what_it_left_out_when_asked() {
        let prefs = [Codec::H264, Codec::Vp8, Codec::Vp9];
        let firefox = set(&[Codec::Vp8, Codec::Vp9, Codec::Av1]);
        let send = candidates(&prefs, CodecSet::default());
        assert_eq!(choose(&send, &[firefox]), Some(Codec::Vp8));
        // Asked for VP8, it offered again with H264 alone.
        let unsendable = set(&[Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H265]);
        let send = candidates(&prefs, unsendable);
        assert_eq!(send, vec![Codec::H264]);
        assert_eq!(choose(&send, &[firefox]), Some(Codec::H264));
    }

    #[test]
    fn unknown_receivers_do_not_count_and_an_unknown_publisher_sends_nothing() {
        let send = [Codec::Vp9, Codec::Vp8];
        assert_eq!(choose(&send, &[CodecSet::default()]), Some(Codec::Vp9));
        assert_eq!(choose(&[], &[set(&[Codec::Vp8])]), None);
    }

    #[test]
    fn only_the_common_floor_of_a_codec_is_shareable() {
        let cfg = CodecConfig::new_with_defaults();
        let h264: Vec<(u32, u8, bool)> = cfg
            .params()
            .iter()
            .filter(|p| p.spec().codec == Codec::H264)
            .map(|p| {
                let f = p.spec().format;
                (
                    f.profile_level_id.unwrap_or(0),
                    f.packetization_mode.unwrap_or(0),
                    shareable(p),
                )
            })
            .collect();
        for (profile, mode, ok) in &h264 {
            assert_eq!(
                *ok,
                *mode == 1 && profile >> 16 == 0x42,
                "{profile:x} mode {mode}"
            );
        }
        assert!(h264.iter().any(|(_, _, ok)| *ok));
        let all = CodecSet::of(cfg.params());
        assert_eq!(all.names(), vec!["VP8", "VP9", "H264", "AV1", "H265"]);
        let vp9_profile2 = cfg
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp9 && p.spec().format.profile_id == Some(2))
            .expect("str0m configures VP9 profile 2");
        assert!(!shareable(vp9_profile2));
    }

    #[test]
    fn the_preference_order_is_the_offer_order_without_repeats() {
        let cfg = CodecConfig::new_with_defaults();
        let mut params: Vec<PayloadParams> = cfg.params().to_vec();
        params.reverse();
        assert_eq!(
            preference_order(params.iter()),
            vec![Codec::Av1, Codec::Vp9, Codec::H265, Codec::H264, Codec::Vp8]
        );
    }

    #[test]
    fn put_first_moves_a_codec_to_the_front_of_video_lines_only() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45\r\na=mid:1\r\n";
        let out = put_first(sdp, &[102, 45]);
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 45 96 97 103\r\na=mid:1\r\n"
        );
        assert_eq!(put_first(sdp, &[]), sdp);
        assert_eq!(put_first("m=video 9 X\n", &[1]), "m=video 9 X\n");
    }

    #[test]
    fn answer_keeps_the_offered_codec_order() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103 96 97\r\n";
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=x\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=y\r\n";
        assert_eq!(
            keep_offer_codec_order(offer, answer),
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=x\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103 96 97\r\na=y\r\n"
        );
        // Unknown payload types keep their place at the end; garbage is passed through.
        assert_eq!(
            keep_offer_codec_order("", "m=video 9 X 1 2\n"),
            "m=video 9 X 1 2\n"
        );
        assert_eq!(
            keep_offer_codec_order("m=video 9 X 2\n", "m=video 9 X 1 2\n"),
            "m=video 9 X 2 1\n"
        );
        assert_eq!(keep_offer_codec_order("m=x", "m=\n"), "m=\n");
    }
}
