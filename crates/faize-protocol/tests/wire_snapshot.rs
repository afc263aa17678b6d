//! Fails when the encoding of any message changes: the wire is a contract between a host and an
//! agent that may come from different builds. If the change is intended, bump
//! `PROTOCOL_VERSION` and regenerate with `UPDATE_WIRE_SNAPSHOT=1 cargo test -p faize-protocol`.

use faize_protocol::net::net_samples;
use faize_protocol::{encode_frame, samples, PROTOCOL_VERSION};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn render() -> String {
    let (host, guest) = samples();
    let mut s = format!("protocol version {PROTOCOL_VERSION}\n");
    for m in &host {
        s += &format!("host  {:?}\n      {}\n", m, hex(&encode_frame(m)));
    }
    for m in &guest {
        s += &format!("guest {:?}\n      {}\n", m, hex(&encode_frame(m)));
    }
    let (requests, replies) = net_samples();
    for m in &requests {
        s += &format!("net-guest {:?}\n      {}\n", m, hex(&encode_frame(m)));
    }
    for m in &replies {
        s += &format!("net-host {:?}\n      {}\n", m, hex(&encode_frame(m)));
    }
    s
}

#[test]
fn wire_format_matches_the_checked_in_snapshot() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wire.snap");
    let now = render();
    if std::env::var_os("UPDATE_WIRE_SNAPSHOT").is_some() {
        std::fs::write(path, &now).unwrap();
    }
    let saved = std::fs::read_to_string(path).expect("tests/wire.snap is missing");
    assert_eq!(now, saved, "the wire encoding changed; see the comment at the top of this test");
}
