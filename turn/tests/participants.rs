//! Issue 24, item 2: TURN credentials belong to a participant (the user part of the REST
//! username), not to one credential: fresh credentials for the same participant share its
//! quota, and a participant removed from the call (kicked, call ended) cannot allocate with
//! credentials minted before. Sans-IO: the core driven with in-memory packets.

mod sans_io;

use consulta_turn::auth::credentials;
use consulta_turn::Transport;
use sans_io::*;

fn minted(user: &str, port: u16, at: u64) -> Client {
    let mut c = Client::new(&format!("192.0.2.10:{port}"), Transport::Udp, 3600);
    (c.username, c.password) = credentials(SECRET, user, 3600, T0_UNIX + at);
    c
}

#[test]
fn quotas_are_per_participant_not_per_credential() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 2;
    let mut h = Harness::new(cfg);
    // Each rejoin mints a credential with a later expiry for the same participant.
    h.allocate(0, &mut minted("p-ana", 1, 0));
    h.allocate(60, &mut minted("p-ana", 2, 60));
    assert_eq!(
        h.start_allocate(120, &mut minted("p-ana", 3, 120))
            .unwrap_err(),
        486
    );
    // Someone else has a quota of their own.
    h.allocate(120, &mut minted("p-bob", 4, 120));
    assert_eq!(h.server.counters().snapshot().quota_refusals, 1);
}

#[test]
fn a_revoked_participant_cannot_allocate_with_older_credentials() {
    let mut h = Harness::new(config());
    let mut before = minted("p-ana", 1, 0);
    let mut also_before = minted("p-ana", 2, 5);
    h.server.revoke("p-ana", T0_UNIX + 10);
    assert_eq!(h.start_allocate(10, &mut before).unwrap_err(), 403);
    assert_eq!(h.start_allocate(11, &mut also_before).unwrap_err(), 403);
    // Another participant is not affected.
    h.allocate(12, &mut minted("p-bob", 3, 0));
    // Credentials minted after the revocation (admitted again) work.
    h.allocate(20, &mut minted("p-ana", 4, 20));
    assert_eq!(h.server.counters().snapshot().revoked_refusals, 2);
}

#[test]
fn allocations_of_expired_credentials_leave_the_quota_to_fresh_ones() {
    // A call outlives its credentials: the SDK gets fresh ones and restarts ICE; the browser
    // often lets the old allocations go only after their credential expired, so it cannot
    // release them, and they linger until their lifetime ends.
    let mut cfg = config();
    cfg.max_allocations_per_user = 2;
    let mut h = Harness::new(cfg);
    let short = |port: u16, at: u64| {
        let mut c = Client::new(&format!("192.0.2.10:{port}"), Transport::Udp, 3600);
        (c.username, c.password) = credentials(SECRET, "p-ana", 60, T0_UNIX + at);
        c
    };
    h.allocate(0, &mut short(1, 0));
    h.allocate(1, &mut short(2, 0));
    // Still valid: the quota holds.
    assert_eq!(h.start_allocate(30, &mut short(3, 30)).unwrap_err(), 486);
    // The first credential expired (both its allocations are still alive): fresh ones work.
    h.allocate(61, &mut short(4, 61));
    h.allocate(62, &mut short(5, 61));
    assert_eq!(h.start_allocate(63, &mut short(6, 61)).unwrap_err(), 486);
}
