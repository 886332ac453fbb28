//! Connection quality without sockets: everyone in a room hears each participant's level (its
//! own included) once connected, and `lost` at once when one of them loses its connection.

mod harness;

use consulta_sfu::{Command, ServerMessage};
use consulta_signaling::protocol::QualityLevel;
use harness::Net;

fn levels_of(net: &Net, i: usize, who: &str) -> Vec<QualityLevel> {
    net.clients[i]
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Quality {
                identity, level, ..
            } if identity == who => Some(*level),
            _ => None,
        })
        .collect()
}

#[test]
fn everyone_hears_each_level_and_a_lost_connection_at_once() {
    let mut net = Net::new(5);
    let a = net.join("room-q", "doctor", true);
    let b = net.join("room-q", "patient", true);
    net.until(10, "both connected", |n| {
        n.clients.iter().all(|c| c.connected)
    });
    net.until(5, "levels for both, at both", |n| {
        [a, b].iter().all(|i| {
            !levels_of(n, *i, "doctor").is_empty() && !levels_of(n, *i, "patient").is_empty()
        })
    });
    // A clean in-memory link.
    assert_eq!(levels_of(&net, a, "patient")[0], QualityLevel::Excellent);
    assert_eq!(levels_of(&net, b, "doctor")[0], QualityLevel::Excellent);
    let peer = net.clients[b].peer;
    net.host.on_command(Command::Hold { peer });
    net.until(3, "the doctor hears the patient is lost", |n| {
        levels_of(n, a, "patient").last() == Some(&QualityLevel::Lost)
    });
}
