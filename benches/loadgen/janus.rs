//! The same synthetic participant against Janus VideoRoom (the system Consulta replaces), for a
//! side-by-side comparison on the same load.
//!
//! Janus speaks its own JSON API over WebSocket (subprotocol `janus-protocol`): a session, a
//! publisher handle that joins the room and publishes (our offer, its answer), and one subscriber
//! handle per remote feed (its offer, our answer). Each PeerConnection is a str0m `Rtc`; they
//! share the participant's UDP socket and incoming datagrams go to the `Rtc` that accepts them.
//!
//! With `--simulcast` a publisher sends the three rid layers it sends to Consulta (`LAYERS`),
//! and each subscription asks for Janus's substream 2: the top layer, one per subscriber.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::SinkExt;
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Simulcast, SimulcastLayer};
use str0m::{Candidate, Rtc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::media::{
    burst_time, capture_ticks, poll, split_ws, tick, write, Inbox, MediaSocket, WsSink, BURST,
};
use crate::{count_rtp, video_frame, Args, Stats, LAYERS};

struct Conn {
    ws: WsSink,
    /// Janus's messages, read on their own task (see [`split_ws`]).
    rx: tokio::sync::mpsc::Receiver<String>,
    session: u64,
    next_tx: u64,
}

impl Conn {
    async fn send(&mut self, mut v: Value) -> Result<String> {
        self.next_tx += 1;
        let tx = format!("t{}", self.next_tx);
        v["transaction"] = json!(tx);
        if self.session != 0 {
            v["session_id"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .context("janus send")?;
        Ok(tx)
    }

    /// Waits for the reply to `tx` (skipping acks); other messages are kept for later.
    async fn reply(&mut self, tx: &str, backlog: &mut Vec<Value>) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline.into(), self.rx.recv())
                .await
                .context("janus did not answer")?;
            let Some(t) = msg else {
                bail!("janus closed the WebSocket");
            };
            let v: Value = serde_json::from_str(&t)?;
            if v["transaction"] == tx && v["janus"] != "ack" {
                if v["janus"] == "error" {
                    bail!("janus error: {}", v["error"]);
                }
                return Ok(v);
            }
            if v["janus"] != "ack" {
                backlog.push(v);
            }
        }
    }

    async fn call(&mut self, v: Value, backlog: &mut Vec<Value>) -> Result<Value> {
        let tx = self.send(v).await?;
        self.reply(&tx, backlog).await
    }

    async fn attach(&mut self, backlog: &mut Vec<Value>) -> Result<u64> {
        let r = self
            .call(
                json!({"janus":"attach","plugin":"janus.plugin.videoroom"}),
                backlog,
            )
            .await?;
        r["data"]["id"]
            .as_u64()
            .context("attach without a handle id")
    }

    async fn message(&mut self, handle: u64, body: Value, jsep: Option<Value>) -> Result<String> {
        let mut m = json!({"janus":"message","handle_id":handle,"body":body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.send(m).await
    }
}

/// One PeerConnection to Janus.
struct Pc {
    rtc: Rtc,
    /// Our offer waiting for Janus's answer (publisher only).
    pending: Option<SdpPendingOffer>,
    handle: u64,
}

pub async fn participant(args: &Args, room: u64, id: u32, stats: &Stats) -> Result<()> {
    let t0 = Instant::now();
    let mut req = args.url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "janus-protocol".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("janus connect")?;
    let (ws, rx) = split_ws(ws);
    let mut c = Conn {
        ws,
        rx,
        session: 0,
        next_tx: 0,
    };
    let mut backlog = Vec::new();
    let created = c.call(json!({"janus":"create"}), &mut backlog).await?;
    c.session = created["data"]["id"]
        .as_u64()
        .context("create without a session id")?;
    let publisher = c.attach(&mut backlog).await?;
    // The first participant creates the room; later ones find it there (427).
    let create = json!({"janus":"message","handle_id":publisher,"body":{
        "request":"create","room":room,"publishers":args.participants,
        "bitrate": args.video_kbps * 1000 + 200_000, "videocodec":"vp8","audiocodec":"opus",
        "permanent": false}});
    let r = c.call(create, &mut backlog).await?;
    let code = r["plugindata"]["data"]["error_code"].as_u64();
    if code.is_some_and(|c| c != 427) {
        bail!("janus room create: {}", r["plugindata"]["data"]);
    }
    // Janus answers ICE checks only on the interface its candidate is on (the veth of
    // scripts/bench-vs-janus.sh): our candidate lives there too.
    let mut udp = MediaSocket::bind(args.bind_ip)?;
    let local = udp.local;
    let new_rtc = || {
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("a host candidate"));
        rtc
    };
    let join_tx = c
        .message(
            publisher,
            json!({"request":"join","ptype":"publisher","room":room,"display":format!("bench-{id}")}),
            None,
        )
        .await?;
    let mut pcs: Vec<Pc> = Vec::new();
    let mut subscribed: HashSet<u64> = HashSet::new();
    let mut want: Vec<u64> = Vec::new();
    let mut sub_by_handle: HashMap<u64, usize> = HashMap::new();
    let (mut audio_mid, mut video_mid) = (None, None);
    let mut publishing = false;
    let mut joined = false;
    let mut frame = Vec::with_capacity(16 * 1024);
    let frame_len = (args.video_kbps * 1000 / 8 / 30) as usize;
    let (mut vn, mut an) = (0u32, 0u32);
    let mut inbox = Inbox::new(stats, t0);
    let (mut video_tick, mut audio_tick) = capture_ticks(id);
    let mut keepalive = tokio::time::interval(Duration::from_secs(20));
    // One timer for the Rtcs' deadlines, moved rather than made anew each turn.
    let wake = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wake);
    let mut leave_at: Option<Instant> = None;
    loop {
        if leave_at.is_none() && stats.stop.load(Ordering::Relaxed) {
            leave_at = Some(Instant::now() + Duration::from_millis(500));
        }
        if leave_at.is_some_and(|t| Instant::now() >= t) {
            let _ = c.send(json!({"janus":"destroy"})).await;
            return Ok(());
        }
        // Janus events that arrived while we waited for a reply.
        for v in std::mem::take(&mut backlog) {
            if std::env::var_os("CONSULTA_BENCH_DEBUG").is_some() {
                eprintln!("janus {id} <- {v}");
            }
            handle_event(
                &v,
                publisher,
                &join_tx,
                &mut joined,
                &mut want,
                &mut pcs,
                &sub_by_handle,
                &mut c,
            )
            .await?;
        }
        if joined && !publishing {
            // Publish: our offer through `configure`.
            let mut rtc = new_rtc();
            let mut change = rtc.sdp_api();
            audio_mid =
                Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            // With `--simulcast`, the same three layers as against Consulta (see `LAYERS`).
            let layers = args.simulcast.then(|| {
                let mut sim = Simulcast::new();
                for (rid, _) in LAYERS {
                    sim.add_send_layer(SimulcastLayer::new(rid));
                }
                sim
            });
            video_mid =
                Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers));
            let (offer, pending) = change.apply().context("an offer")?;
            let mut jsep = json!({"type":"offer","sdp":offer.to_sdp_string()});
            if args.simulcast {
                // Janus takes the offer's `a=rid` lines as highest first ("hml", the order of
                // janus.js) unless told otherwise: ours go low to high, so without this `q`
                // would be its substream 2 and `f` its substream 0.
                jsep["rid_order"] = json!("lmh");
            }
            c.message(
                publisher,
                json!({"request":"configure","audio":true,"video":true}),
                Some(jsep),
            )
            .await?;
            // Our candidate is in the SDP; tell Janus there are no more.
            c.send(json!({"janus":"trickle","handle_id":publisher,"candidate":{"completed":true}}))
                .await?;
            pcs.push(Pc {
                rtc,
                pending: Some(pending),
                handle: publisher,
            });
            publishing = true;
        }
        for feed in std::mem::take(&mut want) {
            if !subscribed.insert(feed) {
                continue;
            }
            let h = c.attach(&mut backlog).await?;
            sub_by_handle.insert(h, pcs.len());
            pcs.push(Pc {
                rtc: new_rtc(),
                pending: None,
                handle: h,
            });
            // One layer per subscriber: Janus's substream 2, the top one (`f`, see `rid_order`
            // above), which is also its default; asked for explicitly all the same.
            let mut stream = json!({"feed":feed});
            if args.simulcast {
                stream["substream"] = json!(2);
            }
            c.message(
                h,
                json!({"request":"join","ptype":"subscriber","room":room,"streams":[stream]}),
                None,
            )
            .await?;
        }
        // Drain every PeerConnection.
        let mut next = Instant::now() + Duration::from_millis(100);
        for pc in &mut pcs {
            let handle = pc.handle;
            let t = poll(&mut pc.rtc, &mut udp, &mut inbox, |e| {
                if std::env::var_os("CONSULTA_BENCH_DEBUG").is_some() {
                    eprintln!("janus {id} pc {handle}: {e:?}");
                }
            })?;
            next = next.min(t);
        }
        udp.flush(stats);
        let sending = leave_at.is_none();
        let pub_ready = pcs
            .first()
            .is_some_and(|p| p.pending.is_none() && p.rtc.is_connected());
        let deadline = tokio::time::Instant::from_std(next);
        if wake.deadline() != deadline {
            wake.as_mut().reset(deadline);
        }
        tokio::select! {
            msg = c.rx.recv() => {
                let Some(t) = msg else { bail!("janus closed the WebSocket") };
                let v: Value = serde_json::from_str(&t)?;
                backlog.push(v);
            }
            r = udp.socket.readable() => {
                r?;
                // Every datagram that is there (up to a burst), each followed by its Rtc's
                // output; what that sends leaves in one batch.
                let now = Instant::now();
                for pc in &mut pcs {
                    tick(&mut pc.rtc, &mut udp, &mut inbox, now)?;
                }
                let at = burst_time(now);
                for _ in 0..BURST {
                    let Some((n, from)) = udp.try_recv()? else { break };
                    count_rtp(udp.data(n), stats);
                    let Some(input) = udp.input(n, from, at) else { continue };
                    if let Some(pc) = pcs.iter_mut().find(|p| p.rtc.accepts(&input)) {
                        pc.rtc.handle_input(input)?;
                        poll(&mut pc.rtc, &mut udp, &mut inbox, |_| {})?;
                    }
                }
            }
            _ = video_tick.tick(), if pub_ready && sending => {
                let key = vn % 60 == 0 || std::mem::take(&mut inbox.force_key);
                let len = if key { frame_len * 4 } else { frame_len };
                let time = MediaTime::from_90khz(u64::from(vn) * 3000);
                if let (Some(pc), Some(mid)) = (pcs.first_mut(), video_mid) {
                    if args.simulcast {
                        // One frame per layer, each with the same counter, as against Consulta:
                        // a subscriber counts its layer's frames as it would one stream's.
                        for (rid, share) in LAYERS {
                            video_frame(&mut frame, key, len / share, id, vn);
                            write(&mut pc.rtc, &mut udp, &mut inbox, (mid, Some(rid)), Codec::Vp8, time, &frame)?;
                        }
                    } else {
                        video_frame(&mut frame, key, len, id, vn);
                        write(&mut pc.rtc, &mut udp, &mut inbox, (mid, None), Codec::Vp8, time, &frame)?;
                    }
                }
                vn += 1;
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = audio_tick.tick(), if pub_ready && sending => {
                frame.clear();
                frame.resize(80, 0xAA);
                if let (Some(pc), Some(mid)) = (pcs.first_mut(), audio_mid) {
                    write(&mut pc.rtc, &mut udp, &mut inbox, (mid, None), Codec::Opus, MediaTime::from_millis(u64::from(an) * 20), &frame)?;
                }
                an += 1;
            }
            _ = keepalive.tick() => {
                c.send(json!({"janus":"keepalive"})).await?;
            }
            _ = &mut wake => {
                let now = Instant::now();
                for pc in &mut pcs {
                    tick(&mut pc.rtc, &mut udp, &mut inbox, now)?;
                }
            }
        }
    }
}

/// One asynchronous Janus event: joined (with the publishers already there), new publishers,
/// the answer to our publish offer, a subscription's offer.
#[allow(clippy::too_many_arguments)]
async fn handle_event(
    v: &Value,
    publisher: u64,
    join_tx: &str,
    joined: &mut bool,
    want: &mut Vec<u64>,
    pcs: &mut [Pc],
    sub_by_handle: &HashMap<u64, usize>,
    c: &mut Conn,
) -> Result<()> {
    if v["janus"] == "keepalive" || v["janus"] == "ack" || v["janus"] == "success" {
        return Ok(());
    }
    let sender = v["sender"].as_u64().unwrap_or(0);
    let data = &v["plugindata"]["data"];
    if let Some(code) = data["error_code"].as_u64() {
        bail!("janus videoroom error {code}: {}", data["error"]);
    }
    if sender == publisher {
        if v["transaction"] == join_tx && data["videoroom"] == "joined" {
            *joined = true;
        }
        if let Some(list) = data["publishers"].as_array() {
            want.extend(list.iter().filter_map(|p| p["id"].as_u64()));
        }
        if v["jsep"]["type"] == "answer" {
            if let Some(pc) = pcs.first_mut() {
                let answer =
                    SdpAnswer::from_sdp_string(v["jsep"]["sdp"].as_str().unwrap_or_default())?;
                let pending = pc.pending.take().context("an answer without an offer")?;
                pc.rtc.sdp_api().accept_answer(pending, answer)?;
            }
        }
        return Ok(());
    }
    if let Some(i) = sub_by_handle.get(&sender).copied() {
        if v["jsep"]["type"] == "offer" {
            let offer = SdpOffer::from_sdp_string(v["jsep"]["sdp"].as_str().unwrap_or_default())?;
            let pc = pcs.get_mut(i).context("subscriber index")?;
            let answer = pc.rtc.sdp_api().accept_offer(offer)?;
            let handle = pc.handle;
            c.message(
                handle,
                json!({"request":"start"}),
                Some(json!({"type":"answer","sdp":answer.to_sdp_string()})),
            )
            .await?;
            c.send(json!({"janus":"trickle","handle_id":handle,"candidate":{"completed":true}}))
                .await?;
        }
    }
    Ok(())
}
