//! One OpenFlow session, deterministically (no I/O, no clock): SET_ASYNC /
//! GET_ASYNC with the OpenFlow 1.3 defaults filtering PACKET_IN,
//! PORT_STATUS and FLOW_REMOVED by reason and role; miss_send_len cutting
//! table-miss PACKET_INs only; malformed PACKET_OUT and FLOW_MOD answered
//! with an error while the session stays up and nothing is sent.

#[path = "support/pipeline_switch.rs"]
mod pipeline_switch;
use fallback::ofproto::{Match, OfAction, Rule};
use flowmark::openflow::message::{
    flow_removed_reason, packet_in_reason, AsyncConfig, PacketOut, SwitchConfig, OFP_NO_BUFFER,
};
use flowmark::openflow::port::OFPP_CONTROLLER;
use flowmark::openflow::session::Session;
use flowmark::openflow::switch::{PortInfo, SwitchEvent};
use flowmark::openflow::{decode, encode, Message};
use pipeline_switch::PipelineSwitch;
use std::time::{Duration, Instant};

fn switch() -> PipelineSwitch {
    PipelineSwitch::new(
        1,
        (1..=3)
            .map(|i| PortInfo {
                ofport: i,
                name: format!("p{i}"),
                config: 0,
            })
            .collect(),
    )
}

/// A session past HELLO, its output drained.
fn ready(sw: &PipelineSwitch) -> Session {
    let mut s = Session::new(Instant::now());
    s.receive(
        &encode(0, &Message::Hello { versions: 1 << 4 }),
        sw,
        Instant::now(),
    );
    assert!(s.is_ready());
    let _ = s.take_output();
    s
}

/// The messages in `bytes`.
fn messages(bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        out.push(
            decode(&bytes[at..at + len])
                .expect("switch output decodes")
                .msg,
        );
        at += len;
    }
    out
}

fn send(s: &mut Session, sw: &PipelineSwitch, xid: u32, m: &Message) -> Vec<Message> {
    s.receive(&encode(xid, m), sw, Instant::now());
    messages(&s.take_output())
}

fn packet_in(miss: bool, len: usize) -> SwitchEvent {
    SwitchEvent::PacketIn {
        in_port: 1,
        table: 0,
        cookie: 0,
        miss,
        total_len: len,
        frame: vec![0xab; len],
    }
}

fn removed(reason: u8) -> SwitchEvent {
    SwitchEvent::FlowRemoved {
        rule: Box::new(Rule {
            table: 0,
            priority: 7,
            r#match: Match::ANY,
            actions: vec![OfAction::Output(2)],
            cookie: 9,
            idle_timeout: 0,
            hard_timeout: 0,
        }),
        reason,
        age: Duration::from_millis(1500),
        packets: 3,
        bytes: 300,
    }
}

fn event(s: &mut Session, ev: &SwitchEvent) -> Vec<Message> {
    s.event(ev);
    messages(&s.take_output())
}

#[test]
fn async_config_defaults_and_set_async_filter_messages() {
    let sw = switch();
    let mut s = ready(&sw);
    let got = send(&mut s, &sw, 5, &Message::GetAsyncRequest);
    assert_eq!(got, vec![Message::GetAsyncReply(AsyncConfig::OF13_DEFAULT)]);
    // Defaults: both PACKET_IN reasons, every FLOW_REMOVED reason.
    assert_eq!(event(&mut s, &packet_in(true, 60)).len(), 1);
    assert_eq!(event(&mut s, &packet_in(false, 60)).len(), 1);
    match &event(&mut s, &removed(flow_removed_reason::DELETE))[..] {
        [Message::FlowRemoved(f)] => {
            assert_eq!((f.reason, f.priority, f.cookie), (2, 7, 9));
            assert_eq!((f.packet_count, f.byte_count), (3, 300));
            assert_eq!((f.duration_sec, f.duration_nsec), (1, 500_000_000));
        }
        other => panic!("one FLOW_REMOVED: {other:?}"),
    }
    // Table misses only; idle timeouts only.
    let c = AsyncConfig {
        packet_in: [1 << packet_in_reason::NO_MATCH, 0],
        port_status: [0, 0],
        flow_removed: [1 << flow_removed_reason::IDLE_TIMEOUT, 0],
    };
    assert!(send(&mut s, &sw, 6, &Message::SetAsync(c)).is_empty());
    assert_eq!(
        send(&mut s, &sw, 7, &Message::GetAsyncRequest),
        vec![Message::GetAsyncReply(c)]
    );
    assert!(event(&mut s, &packet_in(false, 60)).is_empty());
    assert_eq!(event(&mut s, &packet_in(true, 60)).len(), 1);
    assert!(event(&mut s, &removed(flow_removed_reason::DELETE)).is_empty());
    assert_eq!(
        event(&mut s, &removed(flow_removed_reason::IDLE_TIMEOUT)).len(),
        1
    );
    assert!(event(
        &mut s,
        &SwitchEvent::PortAdded(PortInfo {
            ofport: 4,
            name: "p4".into(),
            config: 0,
        })
    )
    .is_empty());
}

#[test]
fn a_slave_gets_no_packet_ins_by_default_and_may_not_change_the_switch() {
    let sw = switch();
    let mut s = ready(&sw);
    let reply = send(
        &mut s,
        &sw,
        3,
        &Message::RoleRequest {
            role: 3,
            generation_id: 1,
        },
    );
    assert!(matches!(reply[..], [Message::RoleReply { role: 3, .. }]));
    // A slave may not change the switch (OFPBRC_IS_SLAVE), as OVS answers.
    let add = add_flow();
    let out = send(&mut s, &sw, 4, &add);
    assert!(
        out.len() == 1 && is_error(&out[0], 1, 10),
        "a slave's flow mod: {out:?}"
    );
    assert!(
        sw.pipeline().is_empty(),
        "the slave's flow mod added nothing"
    );
    let po = Message::PacketOut(PacketOut {
        buffer_id: OFP_NO_BUFFER,
        in_port: OFPP_CONTROLLER,
        actions: vec![OfAction::Output(2)],
        data: vec![0xff; 60],
    });
    let out = send(&mut s, &sw, 5, &po);
    assert!(out.len() == 1 && is_error(&out[0], 1, 10), "{out:?}");
    assert!(sw.packet_outs().is_empty());
    // Reads are served.
    assert!(matches!(
        send(&mut s, &sw, 6, &Message::GetAsyncRequest)[..],
        [Message::GetAsyncReply(_)]
    ));
    // Back to equal, it may.
    send(
        &mut s,
        &sw,
        7,
        &Message::RoleRequest {
            role: 1,
            generation_id: 2,
        },
    );
    assert!(send(&mut s, &sw, 8, &add).is_empty());
    assert_eq!(sw.pipeline().len(), 1);
    send(
        &mut s,
        &sw,
        9,
        &Message::RoleRequest {
            role: 3,
            generation_id: 3,
        },
    );
    assert!(event(&mut s, &packet_in(true, 60)).is_empty());
    assert!(event(&mut s, &removed(flow_removed_reason::DELETE)).is_empty());
    assert_eq!(
        event(
            &mut s,
            &SwitchEvent::PortAdded(PortInfo {
                ofport: 4,
                name: "p4".into(),
                config: 0,
            })
        )
        .len(),
        1
    );
}

/// Two connections share the switch's master election, as in Open
/// vSwitch: a new master makes the old one a slave (its changes are then
/// refused); a master or slave request with a generation id older than the
/// last is OFPRRFC_STALE; a role above slave is OFPRRFC_BAD_ROLE; equal
/// takes no part.
#[test]
fn a_new_master_makes_the_old_one_a_slave_and_stale_requests_are_refused() {
    let sw = switch();
    let election = std::sync::Arc::new(flowmark::openflow::session::Election::default());
    let join = |s: Session| {
        let mut s = s.with_election(std::sync::Arc::clone(&election));
        s.receive(
            &encode(0, &Message::Hello { versions: 1 << 4 }),
            &sw,
            Instant::now(),
        );
        let _ = s.take_output();
        s
    };
    let mut a = join(Session::new(Instant::now()));
    let mut b = join(Session::new(Instant::now()));
    let role = |s: &mut Session, xid: u32, role: u32, generation_id: u64| {
        send(
            s,
            &sw,
            xid,
            &Message::RoleRequest {
                role,
                generation_id,
            },
        )
    };
    let master = |out: &[Message]| matches!(out, [Message::RoleReply { role: 2, .. }]);
    assert!(master(&role(&mut a, 1, 2, 10)));
    let probe = Message::PacketOut(PacketOut {
        buffer_id: OFP_NO_BUFFER,
        in_port: OFPP_CONTROLLER,
        actions: vec![OfAction::Output(2)],
        data: vec![0xff; 60],
    });
    assert!(send(&mut a, &sw, 2, &probe).is_empty(), "the master may");
    assert!(master(&role(&mut b, 3, 2, 11)));
    // A is a slave now: it is told at once (ROLE_STATUS, unsolicited), its
    // packet-out is refused, and a role request says so.
    a.tick(Instant::now());
    assert_eq!(
        messages(&a.take_output()),
        vec![Message::RoleStatus {
            role: 3,
            reason: 0,
            generation_id: 11
        }]
    );
    let out = send(&mut a, &sw, 4, &probe);
    assert!(out.len() == 1 && is_error(&out[0], 1, 10), "{out:?}");
    // A no-change request reads the role and the election's generation.
    assert!(matches!(
        role(&mut a, 5, 0, 0)[..],
        [Message::RoleReply {
            role: 3,
            generation_id: 11
        }]
    ));
    // A stale claim (generation 9 < 11) changes nothing.
    let out = role(&mut a, 6, 2, 9);
    assert!(out.len() == 1 && is_error(&out[0], 11, 0), "{out:?}");
    assert!(send(&mut b, &sw, 7, &probe).is_empty(), "B is still master");
    // A role above slave is refused.
    let out = role(&mut a, 8, 4, 12);
    assert!(out.len() == 1 && is_error(&out[0], 11, 2), "{out:?}");
    // Equal needs no election: any generation id will do.
    assert!(matches!(
        role(&mut a, 9, 1, 0)[..],
        [Message::RoleReply { role: 1, .. }]
    ));
    assert!(send(&mut a, &sw, 10, &probe).is_empty());
    // B's connection ends: nobody is master; A may claim it with a newer id.
    b.leave_election();
    assert!(master(&role(&mut a, 11, 2, 12)));
}

#[test]
fn miss_send_len_cuts_table_misses_only() {
    let sw = switch();
    let mut s = ready(&sw);
    send(
        &mut s,
        &sw,
        2,
        &Message::SetConfig(SwitchConfig {
            flags: 0,
            miss_send_len: 20,
        }),
    );
    match &event(&mut s, &packet_in(true, 100))[..] {
        [Message::PacketIn(p)] => {
            assert_eq!(p.reason, packet_in_reason::NO_MATCH);
            assert_eq!((p.total_len, p.data.len()), (100, 20));
            assert_eq!(p.buffer_id, OFP_NO_BUFFER);
        }
        other => panic!("{other:?}"),
    }
    // An action's punt was cut to its max_len by the datapath: as it is.
    let action = SwitchEvent::PacketIn {
        in_port: 1,
        table: 3,
        cookie: 5,
        miss: false,
        total_len: 100,
        frame: vec![1; 50],
    };
    match &event(&mut s, &action)[..] {
        [Message::PacketIn(p)] => {
            assert_eq!(p.reason, packet_in_reason::ACTION);
            assert_eq!((p.total_len, p.data.len(), p.table_id), (100, 50, 3));
        }
        other => panic!("{other:?}"),
    }
}

/// A FLOW_MOD adding `actions=output:2` at priority 1 to table 0.
fn add_flow() -> Message {
    Message::FlowMod(flowmark::openflow::message::FlowMod {
        cookie: 0,
        cookie_mask: 0,
        table_id: 0,
        command: flowmark::openflow::message::FlowModCommand::Add,
        idle_timeout: 0,
        hard_timeout: 0,
        priority: 1,
        buffer_id: OFP_NO_BUFFER,
        out_port: flowmark::openflow::port::OFPP_ANY,
        out_group: flowmark::openflow::message::OFPG_ANY,
        flags: 0,
        r#match: Match::ANY,
        actions: vec![OfAction::Output(2)],
    })
}

fn is_error(m: &Message, err_type: u16, code: u16) -> bool {
    matches!(m, Message::Error { err_type: t, code: c, .. } if *t == err_type && *c == code)
}

#[test]
fn malformed_packet_outs_and_flow_mods_get_errors_and_send_nothing() {
    let sw = switch();
    let mut s = ready(&sw);
    let good = PacketOut {
        buffer_id: OFP_NO_BUFFER,
        in_port: OFPP_CONTROLLER,
        actions: vec![OfAction::Output(2)],
        data: vec![0xff; 60],
    };
    let bytes = encode(10, &Message::PacketOut(good.clone()));
    // Action list length past the message; an action of length 12; a cut
    // message body; an unknown buffer id.
    let mut past = bytes.clone();
    past[16] = 0x7f;
    let mut odd = bytes.clone();
    odd[27] = 12;
    let cut = {
        let mut b = bytes[..20].to_vec();
        b[2..4].copy_from_slice(&20u16.to_be_bytes());
        b
    };
    let buffered = encode(
        11,
        &Message::PacketOut(PacketOut {
            buffer_id: 7,
            ..good.clone()
        }),
    );
    for (what, bad, err_type, code) in [
        ("actions past the message", past, 1, 6),
        ("action length 12", odd, 2, 1),
        ("cut body", cut, 1, 6),
        ("buffer id 7 (OFPBRC_BUFFER_UNKNOWN)", buffered, 1, 8),
    ] {
        s.receive(&bad, &sw, Instant::now());
        let out = messages(&s.take_output());
        assert!(
            out.len() == 1 && is_error(&out[0], err_type, code),
            "{what}: {out:?}"
        );
        assert!(s.is_ready(), "{what}: the session stays");
    }
    // A flow mod with a bad instruction length.
    let mut fm = encode(12, &add_flow());
    let n = fm.len();
    // The apply-actions instruction's length (after the 8-byte empty match).
    fm[n - 24 + 3] = 0x30;
    s.receive(&fm, &sw, Instant::now());
    let out = messages(&s.take_output());
    assert!(
        matches!(out[..], [Message::Error { .. }]),
        "malformed flow mod: {out:?}"
    );
    assert!(s.is_ready());
    assert!(
        sw.pipeline().is_empty(),
        "the refused flow mod added nothing"
    );
    assert!(
        sw.packet_outs().is_empty(),
        "the refused packet-outs sent nothing"
    );
    // Still serving: the good packet-out goes through, an echo is answered.
    s.receive(&bytes, &sw, Instant::now());
    assert!(s.take_output().is_empty());
    assert_eq!(sw.packet_outs().len(), 1);
    assert_eq!(
        send(&mut s, &sw, 13, &Message::EchoRequest(vec![1, 2])),
        vec![Message::EchoReply(vec![1, 2])]
    );
}

/// PORT_MOD as Open vSwitch checks it (the port must exist, the hardware
/// address must be the port's: OFPPMFC_BAD_PORT / OFPPMFC_BAD_HW_ADDR,
/// nothing changed); its PORT_STATUS (reason MODIFY, the new config, a
/// port configured down has its link down) goes to the other connections,
/// not back to the one that asked (OpenFlow before 1.5).
#[test]
fn port_mod_checks_the_port_and_reports_to_the_other_connections() {
    use flowmark::openflow::message::{PortMod, PortReason, PortStatus, OFPPS_LINK_DOWN};
    use flowmark::openflow::session::port_desc;
    use flowmark::openflow::switch::OpenFlowSwitch;
    let sw = switch();
    let mut asker = ready(&sw);
    let mut other = ready(&sw);
    let hw_addr = port_desc(&sw.ports().unwrap()[1]).hw_addr;
    let pm = |port_no, hw_addr| {
        Message::PortMod(PortMod {
            port_no,
            hw_addr,
            config: 0x1 | 0x20 | 0x10, // PORT_DOWN, NO_FWD, and OpenFlow 1.0's NO_FLOOD
            mask: 0xff,
            advertise: 0,
        })
    };
    let error_code = |m: &[Message]| match m {
        [Message::Error { err_type, code, .. }] => (*err_type, *code),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        error_code(&send(&mut asker, &sw, 1, &pm(9, hw_addr))),
        (7, 0)
    );
    assert_eq!(
        error_code(&send(&mut asker, &sw, 2, &pm(1, hw_addr))),
        (7, 1)
    );
    assert!(sw.ports().unwrap().iter().all(|p| p.config == 0));
    assert!(send(&mut asker, &sw, 3, &pm(2, hw_addr)).is_empty());
    let port = sw.ports().unwrap()[1].clone();
    assert_eq!(port.config, 0x21, "NO_FLOOD is not an OpenFlow 1.3 bit");
    let ev = SwitchEvent::PortModified(port);
    assert!(event(&mut asker, &ev).is_empty(), "not back to the asker");
    match &event(&mut other, &ev)[..] {
        [Message::PortStatus(PortStatus {
            reason: PortReason::Modify,
            desc,
        })] => {
            assert_eq!(
                (desc.port_no, desc.config, desc.state),
                (2, 0x21, OFPPS_LINK_DOWN)
            );
        }
        got => panic!("{got:?}"),
    }
    // A later change by someone else does reach the asker, unsolicited:
    // xid 0, as Open vSwitch sends it (a numbered one could equal the xid
    // of a request the peer waits on).
    asker.event(&ev);
    let out = asker.take_output();
    let env = decode(&out).expect("a PORT_STATUS");
    assert!(matches!(env.msg, Message::PortStatus(_)), "{:?}", env.msg);
    assert_eq!(env.xid, 0);
}
