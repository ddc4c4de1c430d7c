//! Bad input, one table row per normative rule: every malformed or forbidden packet ends its
//! connection the way the spec says (v5: DISCONNECT with the reason code, or CONNACK with it
//! while connecting, then the close; 3.1/3.1.1: a CONNACK return code where the spec has one,
//! otherwise just the close), and the broker stays healthy for everyone else.
//!
//! Rule ids in row names are MQTT 5.0 for v5 rows and MQTT 3.1.1 for 3.x rows; a bare section
//! number (`[3.3.2.3.3]`) names a rule the spec states without an id.
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{RawClient, TestBroker, WAIT, from_hex};
use dataloom::codec::{self, Packet, ProtocolVersion};
use dataloom::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use Expect::{Accepted, Closed, ConnAck, Disconnect, SubAck};
use Setup::{Connect, Nothing};
use V::{V5, V31, V311};

/// The protocol a row speaks: decides the setup CONNECT and how the broker's answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V {
    V31,
    V311,
    V5,
}

impl V {
    fn protocol(self) -> ProtocolVersion {
        match self {
            V31 => ProtocolVersion::V3_1,
            V311 => ProtocolVersion::V3_1_1,
            V5 => ProtocolVersion::V5,
        }
    }
}

/// What happens on the connection before the row's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// The row's bytes are the first bytes on the connection.
    Nothing,
    /// A valid CONNECT (clean session, keep alive 60) is sent and accepted first.
    Connect,
}

/// How the broker must answer the row's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The connection is closed and nothing at all is sent.
    Closed,
    /// v5: DISCONNECT with this reason code, nothing else, then the close.
    Disconnect(u8),
    /// CONNACK with this v5 reason code (v5) or 3.x return code (3.1/3.1.1), then the close.
    ConnAck(u8),
    /// Control row: CONNACK 0 with this v5 Server Keep Alive, and the connection stays up.
    Accepted(Option<u16>),
    /// Control row: SUBACK with these codes, and the connection stays up.
    SubAck(&'static [u8]),
}

struct Row {
    name: &'static str,
    version: V,
    setup: Setup,
    /// The bytes sent, as hex.
    bytes: &'static str,
    expect: Expect,
}

const fn row(name: &'static str, version: V, setup: Setup, bytes: &'static str, expect: Expect) -> Row {
    Row { name, version, setup, bytes, expect }
}

/// The broker every table row runs against: small limits so that rows can exceed them cheaply.
fn table_config(cfg: &mut Config) {
    cfg.mqtt.max_packet_size = 4096;
    cfg.mqtt.max_user_properties = 2;
    cfg.mqtt.max_topic_levels = 8;
    cfg.mqtt.max_keepalive = 600;
    cfg.mqtt.topic_alias_maximum = 10;
}

// Byte-level reminders: a 3.1.1 CONNECT body is `00 04 "MQTT" 04 <flags> <keep alive:2>
// <client id>`, a v5 one has a property length (here `00`) after the keep alive. v5 PUBLISH,
// SUBSCRIBE and UNSUBSCRIBE carry a property length after the topic / packet id.
static ROWS: &[Row] = &[
    // ---- Framing: remaining length and maximum packet size ----
    // Remaining length is a variable byte integer of at most 4 bytes.
    row("v5 [1.5.5] remaining length in 5 bytes", V5, Connect, "30 ff ff ff ff 01", Disconnect(0x81)),
    row("3.1.1 [2.2.3] remaining length in 5 bytes", V311, Connect, "30 ff ff ff ff 01", Closed),
    row("CONNECT with remaining length in 5 bytes", V311, Nothing, "10 ff ff ff ff 01", Closed),
    // Over max_packet_size (4096): only the fixed header is sent, the body never comes.
    row(
        "v5 [3.2.2.3.6] PUBLISH of 256 MB, fixed header only",
        V5,
        Connect,
        "30 ff ff ff 7f",
        Disconnect(0x95),
    ),
    // Remaining length 4094 (fe 1f) + 3 header bytes = 4097, one byte over the limit.
    row(
        "v5 [3.2.2.3.6] PUBLISH one byte over the limit, header only",
        V5,
        Connect,
        "30 fe 1f",
        Disconnect(0x95),
    ),
    row("3.1.1 PUBLISH of 256 MB, fixed header only", V311, Connect, "30 ff ff ff 7f", Closed),
    // A huge CONNECT: header and protocol name/level only; v5 is told 0x95 in a CONNACK.
    row(
        "v5 [3.1.4] CONNECT of 256 MB -> CONNACK 0x95",
        V5,
        Nothing,
        "10 ff ff ff 7f 00 04 4d 51 54 54 05",
        ConnAck(0x95),
    ),
    row("3.1.1 CONNECT of 256 MB", V311, Nothing, "10 ff ff ff 7f 00 04 4d 51 54 54 04", Closed),
    // ---- Packet order ----
    row("[MQTT-3.1.0-1] first packet is PINGREQ", V311, Nothing, "c0 00", Closed),
    // A PUBLISH whose 6th byte happens to be 5: must not be mistaken for a v5 CONNECT.
    row("[MQTT-3.1.0-1] first packet is PUBLISH (byte 5 = 05)", V5, Nothing, "30 04 00 01 74 05", Closed),
    row("[MQTT-3.1.0-1] first packet is SUBSCRIBE", V311, Nothing, "82 06 00 01 00 01 74 00", Closed),
    row(
        "v5 [MQTT-3.1.0-2] second CONNECT",
        V5,
        Connect,
        "10 0e 00 04 4d 51 54 54 05 02 00 3c 00 00 01 62",
        Disconnect(0x82),
    ),
    row(
        "3.1.1 [MQTT-3.1.0-2] second CONNECT",
        V311,
        Connect,
        "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 62",
        Closed,
    ),
    // ---- Reserved packet types ----
    row("3.1.1 [2.2.1] reserved packet type 0", V311, Connect, "00 00", Closed),
    row("v5 [2.1.2] reserved packet type 0", V5, Connect, "00 00", Disconnect(0x81)),
    row("3.1.1 [2.2.1] reserved packet type 15", V311, Connect, "f0 00", Closed),
    row("reserved packet type 0 before CONNECT", V311, Nothing, "00 00", Closed),
    // Type 15 is AUTH in v5; without an Authentication Method in CONNECT it is a protocol error.
    row("v5 [4.12] AUTH without an authentication method", V5, Connect, "f0 00", Disconnect(0x82)),
    // ---- Fixed header flags [MQTT-2.1.3-1] ----
    row(
        "v5 [MQTT-3.8.1-1] SUBSCRIBE with flags 0",
        V5,
        Connect,
        "80 07 00 01 00 00 01 74 00",
        Disconnect(0x81),
    ),
    row("3.1.1 [MQTT-3.8.1-1] SUBSCRIBE with flags 0", V311, Connect, "80 06 00 01 00 01 74 00", Closed),
    row("v5 [MQTT-3.6.1-1] PUBREL with flags 0", V5, Connect, "60 02 00 01", Disconnect(0x81)),
    row("3.1.1 [MQTT-3.10.1-1] UNSUBSCRIBE with flags 0", V311, Connect, "a0 05 00 01 00 01 74", Closed),
    row("3.1.1 [MQTT-2.2.2-1] PINGREQ with flags 0001", V311, Connect, "c1 00", Closed),
    row("v5 [MQTT-2.1.3-1] PINGREQ with flags 1000", V5, Connect, "c8 00", Disconnect(0x81)),
    row(
        "3.1.1 [MQTT-2.2.2-1] CONNECT with flags 0001",
        V311,
        Nothing,
        "11 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 61",
        Closed,
    ),
    row(
        "v5 [MQTT-2.1.3-1] CONNECT with flags 0010",
        V5,
        Nothing,
        "12 0e 00 04 4d 51 54 54 05 02 00 3c 00 00 01 61",
        ConnAck(0x81),
    ),
    // ---- PUBLISH fixed header and topic name ----
    // QoS bits 11, topic "t", packet id 1 (v5: empty properties).
    row("v5 [MQTT-3.3.1-4] PUBLISH QoS 3", V5, Connect, "36 06 00 01 74 00 01 00", Disconnect(0x81)),
    row("3.1.1 [MQTT-3.3.1-4] PUBLISH QoS 3", V311, Connect, "36 05 00 01 74 00 01", Closed),
    row("v5 [MQTT-3.3.1-2] DUP on a QoS 0 PUBLISH", V5, Connect, "38 04 00 01 74 00", Disconnect(0x81)),
    row("3.1.1 [MQTT-3.3.1-2] DUP on a QoS 0 PUBLISH", V311, Connect, "38 03 00 01 74", Closed),
    // Topic "a+" / "a#": a topic name never contains wildcards; v5 says Topic Name invalid.
    row("v5 [MQTT-3.3.2-2] '+' in a PUBLISH topic", V5, Connect, "30 05 00 02 61 2b 00", Disconnect(0x90)),
    row("v5 [MQTT-3.3.2-2] '#' in a PUBLISH topic", V5, Connect, "30 05 00 02 61 23 00", Disconnect(0x90)),
    row("3.1.1 [MQTT-3.3.2-2] '+' in a PUBLISH topic", V311, Connect, "30 06 00 02 2b 61 78 79", Closed),
    row("3.1.1 [MQTT-3.3.2-2] '#' in a PUBLISH topic", V311, Connect, "30 04 00 02 61 23", Closed),
    // Topic "a\0".
    row("v5 [MQTT-1.5.4-2] U+0000 in a topic", V5, Connect, "30 05 00 02 61 00 00", Disconnect(0x81)),
    row("3.1.1 [MQTT-1.5.3-2] U+0000 in a topic", V311, Connect, "30 04 00 02 61 00", Closed),
    // c3 28: a lead byte followed by a non-continuation byte; ed a0 80: an encoded surrogate.
    row(
        "v5 [MQTT-1.5.4-1] ill-formed UTF-8 in a topic",
        V5,
        Connect,
        "30 05 00 02 c3 28 00",
        Disconnect(0x81),
    ),
    row("3.1.1 [MQTT-1.5.3-1] UTF-16 surrogate in a topic", V311, Connect, "30 05 00 03 ed a0 80", Closed),
    row(
        "v5 [MQTT-1.5.4-1] ill-formed UTF-8 in the client id",
        V5,
        Nothing,
        "10 0e 00 04 4d 51 54 54 05 02 00 3c 00 00 01 ff",
        ConnAck(0x81),
    ),
    row(
        "3.1.1 [MQTT-1.5.3-1] ill-formed UTF-8 in the client id",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 ff",
        Closed,
    ),
    // Zero-length topic: v5 needs a Topic Alias then; 3.1.1 never allows it.
    row("v5 [3.3.2.3.4] empty topic without a topic alias", V5, Connect, "30 03 00 00 00", Disconnect(0x82)),
    row("3.1.1 [MQTT-4.7.3-1] empty topic", V311, Connect, "30 02 00 00", Closed),
    // ---- Packet identifiers ----
    row(
        "v5 [MQTT-2.2.1-3] PUBLISH QoS 1 with packet id 0",
        V5,
        Connect,
        "32 06 00 01 74 00 00 00",
        Disconnect(0x82),
    ),
    row("3.1.1 [MQTT-2.3.1-1] PUBLISH QoS 1 with packet id 0", V311, Connect, "32 05 00 01 74 00 00", Closed),
    row(
        "v5 [MQTT-2.2.1-3] SUBSCRIBE with packet id 0",
        V5,
        Connect,
        "82 07 00 00 00 00 01 74 00",
        Disconnect(0x82),
    ),
    row(
        "v5 [MQTT-2.2.1-3] UNSUBSCRIBE with packet id 0",
        V5,
        Connect,
        "a2 06 00 00 00 00 01 74",
        Disconnect(0x82),
    ),
    row("3.1.1 [MQTT-2.3.1-1] UNSUBSCRIBE with packet id 0", V311, Connect, "a2 05 00 00 00 01 74", Closed),
    // ---- SUBSCRIBE / UNSUBSCRIBE payload ----
    row("v5 [MQTT-3.8.3-2] SUBSCRIBE without a filter", V5, Connect, "82 03 00 01 00", Disconnect(0x82)),
    row("3.1.1 [MQTT-3.8.3-3] SUBSCRIBE without a filter", V311, Connect, "82 02 00 01", Closed),
    row("v5 [MQTT-3.10.3-2] UNSUBSCRIBE without a filter", V5, Connect, "a2 03 00 01 00", Disconnect(0x82)),
    row("3.1.1 [MQTT-3.10.3-2] UNSUBSCRIBE without a filter", V311, Connect, "a2 02 00 01", Closed),
    // Bad filters (v5: DISCONNECT 0x81, 3.1.1: closed; broker policy).
    // "a/#/b": '#' must be the last level.
    row(
        "v5 [MQTT-4.7.1-1] filter 'a/#/b'",
        V5,
        Connect,
        "82 0b 00 01 00 00 05 61 2f 23 2f 62 00",
        Disconnect(0x81),
    ),
    row("3.1.1 [MQTT-4.7.1-2] filter 'a/#/b'", V311, Connect, "82 0a 00 01 00 05 61 2f 23 2f 62 00", Closed),
    // "a+": '+' must be a whole level.
    row("v5 [MQTT-4.7.1-2] filter 'a+'", V5, Connect, "82 08 00 01 00 00 02 61 2b 00", Disconnect(0x81)),
    row("3.1.1 [MQTT-4.7.1-3] filter 'a+'", V311, Connect, "82 07 00 01 00 02 61 2b 00", Closed),
    // "a/b#": '#' must be a whole level.
    row(
        "v5 [MQTT-4.7.1-1] filter 'a/b#'",
        V5,
        Connect,
        "82 0a 00 01 00 00 04 61 2f 62 23 00",
        Disconnect(0x81),
    ),
    row("3.1.1 [MQTT-4.7.1-2] filter 'a/b#'", V311, Connect, "82 09 00 01 00 04 61 2f 62 23 00", Closed),
    // "$share/g": a share name with no filter after it.
    row(
        "v5 [MQTT-4.8.2-2] filter '$share/g'",
        V5,
        Connect,
        "82 0e 00 01 00 00 08 24 73 68 61 72 65 2f 67 00",
        Disconnect(0x81),
    ),
    row("3.1.1 filter '$share/g'", V311, Connect, "82 0d 00 01 00 08 24 73 68 61 72 65 2f 67 00", Closed),
    // "$share//t": an empty share name.
    row(
        "v5 [MQTT-4.8.2-1] filter '$share//t'",
        V5,
        Connect,
        "82 0f 00 01 00 00 09 24 73 68 61 72 65 2f 2f 74 00",
        Disconnect(0x81),
    ),
    row("3.1.1 filter '$share//t'", V311, Connect, "82 0e 00 01 00 09 24 73 68 61 72 65 2f 2f 74 00", Closed),
    // "$share/g/t" with No Local (options 0x04).
    row(
        "v5 [MQTT-3.8.3-4] No Local on a shared subscription",
        V5,
        Connect,
        "82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 74 04",
        Disconnect(0x82),
    ),
    // Control: the same shared subscription at QoS 1 without No Local is fine.
    row(
        "v5 control: shared subscription '$share/g/t' QoS 1",
        V5,
        Connect,
        "82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 74 01",
        SubAck(&[1]),
    ),
    // Control: "+/+/+/+/+/+/+/#" has 8 levels, exactly mqtt.max_topic_levels.
    row(
        "3.1.1 control: filter with 8 levels (the limit) QoS 2",
        V311,
        Connect,
        "82 14 00 01 00 0f 2b 2f 2b 2f 2b 2f 2b 2f 2b 2f 2b 2f 2b 2f 23 02",
        SubAck(&[2]),
    ),
    // Subscription options: filter "t", options byte last.
    row(
        "v5 [MQTT-3.8.3-5] subscription options reserved bits",
        V5,
        Connect,
        "82 07 00 01 00 00 01 74 c0",
        Disconnect(0x81),
    ),
    row(
        "3.1.1 [MQTT-3-8.3-4] requested QoS byte reserved bits",
        V311,
        Connect,
        "82 06 00 01 00 01 74 04",
        Closed,
    ),
    row("v5 [3.8.3.1] retain handling 3", V5, Connect, "82 07 00 01 00 00 01 74 30", Disconnect(0x82)),
    row("v5 [3.8.3.1] maximum QoS 3", V5, Connect, "82 07 00 01 00 00 01 74 03", Disconnect(0x82)),
    row("3.1.1 [MQTT-3-8.3-4] requested QoS 3", V311, Connect, "82 06 00 01 00 01 74 03", Closed),
    // Properties `0b 00`: Subscription Identifier 0.
    row(
        "v5 [3.8.2.1.2] subscription identifier 0",
        V5,
        Connect,
        "82 09 00 01 02 0b 00 00 01 74 00",
        Disconnect(0x82),
    ),
    // ---- CONNECT flags and header ----
    // Flags 0x42: clean session + password, no user name; password "p".
    row(
        "3.1.1 [MQTT-3.1.2-22] password without user name",
        V311,
        Nothing,
        "10 10 00 04 4d 51 54 54 04 42 00 3c 00 01 61 00 01 70",
        Closed,
    ),
    row(
        "v5 control: password without user name is allowed [3.1.2.9]",
        V5,
        Nothing,
        "10 11 00 04 4d 51 54 54 05 42 00 3c 00 00 01 70 00 01 70",
        Accepted(None),
    ),
    // Flags 0x0a: will QoS 1 without the will flag; 0x22: will retain without it.
    row(
        "3.1.1 [MQTT-3.1.2-13] will QoS without the will flag",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 04 0a 00 3c 00 01 61",
        Closed,
    ),
    row(
        "v5 [MQTT-3.1.2-13] will retain without the will flag",
        V5,
        Nothing,
        "10 0e 00 04 4d 51 54 54 05 22 00 3c 00 00 01 61",
        ConnAck(0x81),
    ),
    // Flags 0x1e: will flag, will QoS 3; will topic "t", empty will payload.
    row(
        "3.1.1 [MQTT-3.1.2-14] will QoS 3",
        V311,
        Nothing,
        "10 12 00 04 4d 51 54 54 04 1e 00 3c 00 01 61 00 01 74 00 00",
        Closed,
    ),
    row(
        "v5 [MQTT-3.1.2-12] will QoS 3",
        V5,
        Nothing,
        "10 14 00 04 4d 51 54 54 05 1e 00 3c 00 00 01 61 00 00 01 74 00 00",
        ConnAck(0x81),
    ),
    // Flags 0x03: reserved bit 0 set.
    row(
        "3.1.1 [MQTT-3.1.2-3] reserved CONNECT flag",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 04 03 00 3c 00 01 61",
        Closed,
    ),
    row(
        "v5 [MQTT-3.1.2-3] reserved CONNECT flag",
        V5,
        Nothing,
        "10 0e 00 04 4d 51 54 54 05 03 00 3c 00 00 01 61",
        ConnAck(0x81),
    ),
    // Protocol name "MQTX".
    row(
        "3.1.1 [MQTT-3.1.2-1] unknown protocol name",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 58 04 02 00 3c 00 01 61",
        Closed,
    ),
    row(
        "v5 [MQTT-3.1.2-1] unknown protocol name -> 0x84",
        V5,
        Nothing,
        "10 0e 00 04 4d 51 54 58 05 02 00 3c 00 00 01 61",
        ConnAck(0x84),
    ),
    // Unsupported levels get 3.1.1 return code 1 (unacceptable protocol version).
    row(
        "[MQTT-3.1.2-2] protocol level 6",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 06 02 00 3c 00 01 61",
        ConnAck(1),
    ),
    row(
        "[MQTT-3.1.2-2] 'MQIsdp' with level 4",
        V311,
        Nothing,
        "10 0f 00 06 4d 51 49 73 64 70 04 02 00 3c 00 01 61",
        ConnAck(1),
    ),
    row(
        "[MQTT-3.1.2-2] 'MQTT' with level 3",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 03 02 00 3c 00 01 61",
        ConnAck(1),
    ),
    // Flags 0x00 (no clean session) and an empty client id.
    row(
        "3.1.1 [MQTT-3.1.3-8] empty client id without clean session",
        V311,
        Nothing,
        "10 0c 00 04 4d 51 54 54 04 00 00 3c 00 00",
        ConnAck(2),
    ),
    // MQTT 3.1 requires a client id of 1 to 23 characters.
    row(
        "3.1 empty client id -> identifier rejected",
        V31,
        Nothing,
        "10 0e 00 06 4d 51 49 73 64 70 03 02 00 3c 00 00",
        ConnAck(2),
    ),
    // ---- Keep alive (mqtt.max_keepalive = 600) ----
    // 601 = 02 59: 3.x cannot be told a Server Keep Alive, so it is refused.
    row(
        "3.1.1 keep alive 601 above mqtt.max_keepalive",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 04 02 02 59 00 01 61",
        ConnAck(2),
    ),
    row(
        "3.1.1 control: keep alive 600 equal to mqtt.max_keepalive",
        V311,
        Nothing,
        "10 0d 00 04 4d 51 54 54 04 02 02 58 00 01 4b",
        Accepted(None),
    ),
    row(
        "v5 [3.2.2.3.14] keep alive 65535 -> Server Keep Alive 600",
        V5,
        Nothing,
        "10 0e 00 04 4d 51 54 54 05 02 ff ff 00 00 01 6b",
        Accepted(Some(600)),
    ),
    // ---- Truncated: a length running past the end of the packet ----
    // Topic length 5, 2 bytes present.
    row("v5 [1.5.4] PUBLISH topic runs past the end", V5, Connect, "30 04 00 05 61 62", Disconnect(0x81)),
    row("3.1.1 [1.5.3] PUBLISH topic runs past the end", V311, Connect, "30 04 00 05 61 62", Closed),
    // Client id length 5, 2 bytes present.
    row(
        "v5 [1.5.4] CONNECT client id runs past the end",
        V5,
        Nothing,
        "10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 05 61 62",
        ConnAck(0x81),
    ),
    row(
        "3.1.1 [1.5.3] CONNECT client id runs past the end",
        V311,
        Nothing,
        "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 05 61 62",
        Closed,
    ),
    // Filter length 9, "t" and an options byte present.
    row(
        "v5 [1.5.4] SUBSCRIBE filter runs past the end",
        V5,
        Connect,
        "82 07 00 01 00 00 09 74 00",
        Disconnect(0x81),
    ),
    row("3.1.1 [1.5.3] SUBSCRIBE filter runs past the end", V311, Connect, "82 06 00 01 00 09 74 00", Closed),
    // ---- Trailing bytes after a fixed-layout packet ----
    row("3.1.1 [3.4.1] PUBACK with remaining length 3", V311, Connect, "40 03 00 01 00", Closed),
    row("3.1.1 [3.12.1] PINGREQ with a body", V311, Connect, "c0 01 00", Closed),
    row("v5 [3.12.1] PINGREQ with a body", V5, Connect, "c0 01 00", Disconnect(0x81)),
    // ---- v5 properties ----
    // Two Message Expiry Intervals (02 00 00 00 0a) in one PUBLISH.
    row(
        "v5 [3.3.2.3.3] Message Expiry Interval twice",
        V5,
        Connect,
        "30 0e 00 01 74 0a 02 00 00 00 0a 02 00 00 00 0a",
        Disconnect(0x82),
    ),
    row("v5 [2.2.2.2] unknown property id 0x05", V5, Connect, "30 06 00 01 74 02 05 00", Disconnect(0x81)),
    // Topic Alias (23 00 01) in CONNECT properties.
    row(
        "v5 [2.2.2.2] Topic Alias in CONNECT",
        V5,
        Nothing,
        "10 11 00 04 4d 51 54 54 05 02 00 3c 03 23 00 01 00 01 61",
        ConnAck(0x81),
    ),
    // Receive Maximum (21 00 00) = 0.
    row(
        "v5 [3.1.2.11.3] Receive Maximum 0",
        V5,
        Nothing,
        "10 11 00 04 4d 51 54 54 05 02 00 3c 03 21 00 00 00 01 61",
        ConnAck(0x82),
    ),
    row(
        "v5 [3.3.2.3.2] Payload Format Indicator 2",
        V5,
        Connect,
        "30 06 00 01 74 02 01 02",
        Disconnect(0x82),
    ),
    // Topic Alias 0, and 11 above topic_alias_maximum 10.
    row("v5 [MQTT-3.3.2-8] Topic Alias 0", V5, Connect, "30 07 00 01 74 03 23 00 00", Disconnect(0x94)),
    row(
        "v5 [MQTT-3.3.2-9] Topic Alias above the maximum",
        V5,
        Connect,
        "30 07 00 01 74 03 23 00 0b",
        Disconnect(0x94),
    ),
    // Empty topic with Topic Alias 1 that was never set up.
    row(
        "v5 [3.3.2.3.4] unknown Topic Alias with an empty topic",
        V5,
        Connect,
        "30 06 00 00 03 23 00 01",
        Disconnect(0x82),
    ),
    row(
        "v5 [MQTT-3.3.4-6] Subscription Identifier in a client PUBLISH",
        V5,
        Connect,
        "30 06 00 01 74 02 0b 01",
        Disconnect(0x82),
    ),
    // Three user properties k=v (26 00 01 6b 00 01 76) with mqtt.max_user_properties = 2.
    row(
        "v5 too many user properties (mqtt.max_user_properties)",
        V5,
        Connect,
        "30 19 00 01 74 15 26 00 01 6b 00 01 76 26 00 01 6b 00 01 76 26 00 01 6b 00 01 76",
        Disconnect(0x83),
    ),
    // ---- Topic levels (mqtt.max_topic_levels = 8): "a/b/c/d/e/f/g/h/i" has 9 ----
    row(
        "v5 too many levels in a PUBLISH topic",
        V5,
        Connect,
        "30 14 00 11 61 2f 62 2f 63 2f 64 2f 65 2f 66 2f 67 2f 68 2f 69 00",
        Disconnect(0x90),
    ),
    // Over the limit is not malformed: the SUBACK refuses that filter and the connection stays.
    row(
        "3.1.1 too many levels in a SUBSCRIBE filter",
        V311,
        Connect,
        "82 16 00 01 00 11 61 2f 62 2f 63 2f 64 2f 65 2f 66 2f 67 2f 68 2f 69 00",
        SubAck(&[0x80]),
    ),
    row(
        "v5 too many levels in a SUBSCRIBE filter",
        V5,
        Connect,
        "82 17 00 01 00 00 11 61 2f 62 2f 63 2f 64 2f 65 2f 66 2f 67 2f 68 2f 69 00",
        SubAck(&[0x8f]),
    ),
    // ---- Server-to-client packets sent by a client ----
    row("v5 [3.2] CONNACK sent by a client", V5, Connect, "20 03 00 00 00", Disconnect(0x82)),
    row("3.1.1 [3.9] SUBACK sent by a client", V311, Connect, "90 03 00 01 00", Closed),
    row("v5 [3.11] UNSUBACK sent by a client", V5, Connect, "b0 04 00 01 00 00", Disconnect(0x82)),
    row("3.1.1 [3.13] PINGRESP sent by a client", V311, Connect, "d0 00", Closed),
    row("v5 [3.13] PINGRESP sent by a client", V5, Connect, "d0 00", Disconnect(0x82)),
];

// ---- Building valid packets ----

/// A packet: first byte, remaining length, body.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string field.
fn field(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A valid CONNECT: clean session, keep alive 60, no properties.
fn connect_bytes(v: V, client_id: &str) -> Vec<u8> {
    let mut body = match v {
        V31 => [field(b"MQIsdp"), vec![3]].concat(),
        V311 => [field(b"MQTT"), vec![4]].concat(),
        V5 => [field(b"MQTT"), vec![5]].concat(),
    };
    body.extend_from_slice(&[0x02, 0x00, 0x3c]);
    if v == V5 {
        body.push(0);
    }
    body.extend(field(client_id.as_bytes()));
    frame(0x10, &body)
}

/// A SUBSCRIBE (packet id 1) to `topic` at QoS 0.
fn subscribe_bytes(topic: &[u8]) -> Vec<u8> {
    frame(0x82, &[&[0, 1][..], &field(topic), &[0]].concat())
}

/// A QoS 0 PUBLISH of `payload` to `topic`.
fn publish_bytes(topic: &[u8], payload: &[u8]) -> Vec<u8> {
    frame(0x30, &[&field(topic)[..], payload].concat())
}

// ---- Talking to the broker ----

/// Decoder limits that accept any packet the protocol allows, so the broker's answer is judged
/// by the test, not refused by the decoder.
fn any_size() -> codec::Limits {
    codec::Limits { max_packet_size: 268_435_460, ..codec::Limits::default() }
}

/// The next packet from the broker; `None` if it closed the connection first.
async fn next_packet(c: &mut RawClient) -> Result<Option<Packet>, String> {
    let limits = any_size();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match codec::decode_from_server(&mut c.buf, c.version, &limits) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {}
            Err(e) => return Err(format!("broker sent a malformed packet: {e}")),
        }
        match tokio::time::timeout_at(deadline, c.stream.read_buf(&mut c.buf)).await {
            Err(_) => return Err(format!("no packet from the broker within {WAIT:?}")),
            Ok(Ok(0) | Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads until the broker closes the connection (end of stream or reset); returns every byte
/// it sent. Fails if the connection is still open after [`WAIT`].
async fn read_to_close(c: &mut RawClient) -> Result<Vec<u8>, String> {
    let mut all = c.buf.split().to_vec();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, c.stream.read(&mut chunk)).await {
            Err(_) => return Err(format!("connection still open after {WAIT:?}; received {all:02x?}")),
            Ok(Ok(0) | Err(_)) => return Ok(all),
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Every packet in `bytes`, which must hold whole packets only.
fn decode_all(bytes: &[u8], v: ProtocolVersion) -> Result<Vec<Packet>, String> {
    let limits = any_size();
    let mut buf = bytes::BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match codec::decode_from_server(&mut buf, v, &limits) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => return Err(format!("broker sent a partial packet: {bytes:02x?}")),
            Err(e) => return Err(format!("broker sent a malformed packet ({e}): {bytes:02x?}")),
        }
    }
    Ok(out)
}

async fn send(c: &mut RawClient, bytes: &[u8]) -> Result<(), String> {
    c.stream.write_all(bytes).await.map_err(|e| format!("write: {e}"))
}

/// Connects, expecting CONNACK 0.
async fn connected(addr: SocketAddr, v: V, client_id: &str) -> Result<RawClient, String> {
    let mut c = RawClient::connect(addr).await;
    c.version = v.protocol();
    send(&mut c, &connect_bytes(v, client_id)).await?;
    match next_packet(&mut c).await? {
        Some(Packet::ConnAck(a)) if a.code == 0 => Ok(c),
        other => Err(format!("CONNECT {client_id}: expected CONNACK 0, got {other:?}")),
    }
}

/// PINGREQ must be answered by PINGRESP.
async fn ping(c: &mut RawClient) -> Result<(), String> {
    send(c, &[0xc0, 0x00]).await?;
    match next_packet(c).await? {
        Some(Packet::PingResp) => Ok(()),
        other => Err(format!("expected PINGRESP, got {other:?}")),
    }
}

/// A fresh client can connect and gets its PINGRESP.
async fn healthy(addr: SocketAddr, tag: &str) -> Result<(), String> {
    let mut c = connected(addr, V311, &format!("health-{tag}")).await?;
    ping(&mut c).await?;
    send(&mut c, &[0xe0, 0x00]).await
}

/// A subscriber on `topic` receives what another client publishes there.
async fn pubsub_works(addr: SocketAddr, tag: &str) -> Result<(), String> {
    let topic = format!("check/{tag}");
    let mut sub = connected(addr, V311, &format!("sub-{tag}")).await?;
    let subscribe = subscribe_bytes(topic.as_bytes());
    send(&mut sub, &subscribe).await?;
    match next_packet(&mut sub).await? {
        Some(Packet::SubAck(s)) if s.codes == [0] => {}
        other => return Err(format!("expected SUBACK [0], got {other:?}")),
    }
    let mut publ = connected(addr, V311, &format!("pub-{tag}")).await?;
    send(&mut publ, &publish_bytes(topic.as_bytes(), b"still-alive")).await?;
    match next_packet(&mut sub).await? {
        Some(Packet::Publish(p)) if &p.payload[..] == b"still-alive" && p.topic == topic.as_bytes() => Ok(()),
        other => Err(format!("expected the PUBLISH on {topic}, got {other:?}")),
    }
}

/// Runs one row on its own connection and checks the broker's answer.
async fn run_row(addr: SocketAddr, client_id: &str, row: &Row) -> Result<(), String> {
    let v = row.version.protocol();
    let mut c = if row.setup == Connect {
        connected(addr, row.version, client_id).await?
    } else {
        let mut c = RawClient::connect(addr).await;
        c.version = v;
        c
    };
    // The write may fail if the broker already closed; the expectation decides.
    let _ = c.stream.write_all(&from_hex(row.bytes)).await;
    match row.expect {
        Closed => {
            let got = read_to_close(&mut c).await?;
            if !got.is_empty() {
                return Err(format!("expected a silent close, got {:02x?}", got));
            }
        }
        Disconnect(code) => {
            last_packet_then_close(
                &mut c,
                &format!("DISCONNECT 0x{code:02X}"),
                |p| matches!(p, Packet::Disconnect(d) if d.code == code),
            )
            .await?;
        }
        ConnAck(code) if v.is_v5() => {
            last_packet_then_close(
                &mut c,
                &format!("CONNACK 0x{code:02X}"),
                |p| matches!(p, Packet::ConnAck(a) if a.code == code && !a.session_present),
            )
            .await?;
        }
        ConnAck(code) => {
            let got = read_to_close(&mut c).await?;
            if got != [0x20, 0x02, 0x00, code] {
                return Err(format!(
                    "expected CONNACK return code {code} (20 02 00 {code:02x}), got {got:02x?}"
                ));
            }
        }
        Accepted(server_keep_alive) => {
            match next_packet(&mut c).await? {
                Some(Packet::ConnAck(a))
                    if a.code == 0 && a.properties.server_keep_alive == server_keep_alive => {}
                other => {
                    return Err(format!(
                        "expected CONNACK 0, server keep alive {server_keep_alive:?}, got {other:?}"
                    ));
                }
            }
            ping(&mut c).await?;
        }
        SubAck(codes) => {
            match next_packet(&mut c).await? {
                Some(Packet::SubAck(s)) if s.codes == codes => {}
                other => return Err(format!("expected SUBACK {codes:?}, got {other:?}")),
            }
            ping(&mut c).await?;
        }
    }
    Ok(())
}

/// Reads until the broker closes the connection and checks that it sent exactly one packet,
/// one that `expected` accepts; `what` names it in the failure message.
async fn last_packet_then_close(
    c: &mut RawClient,
    what: &str,
    expected: impl Fn(&Packet) -> bool,
) -> Result<(), String> {
    let got = read_to_close(c).await?;
    match decode_all(&got, c.version)?.as_slice() {
        [p] if expected(p) => Ok(()),
        other => Err(format!("expected {what} then close, got {}", brief(other))),
    }
}

/// A packet in a failure message: its name and code, without the empty properties.
fn brief(packets: &[Packet]) -> String {
    let items: Vec<String> = packets
        .iter()
        .map(|p| match p {
            Packet::ConnAck(a) => format!("CONNACK 0x{:02X}", a.code),
            Packet::Disconnect(d) => format!("DISCONNECT 0x{:02X} {:?}", d.code, d.properties.reason_string),
            Packet::SubAck(s) => format!("SUBACK {:?}", s.codes),
            other => other.name().to_string(),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n")
    );
}

// ---- Tests ----

/// The table itself: enough rows, unique names, valid hex, and every packet's remaining length
/// matches its bytes unless the row is about the remaining length or size itself.
#[test]
fn table_is_well_formed() {
    assert!(ROWS.len() >= 40, "only {} rows", ROWS.len());
    let mut names = std::collections::HashSet::new();
    for r in ROWS {
        assert!(names.insert(r.name), "duplicate row name {}", r.name);
        let bytes = from_hex(r.bytes);
        if let Disconnect(_) = r.expect {
            assert_eq!(r.version, V5, "{}: only v5 has DISCONNECT from the server", r.name);
        }
        // Decode the remaining length; rows with 5-byte or over-the-limit lengths are exempt.
        let mut len = 0usize;
        let mut header = None;
        for (i, b) in bytes.iter().skip(1).take(4).enumerate() {
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                header = Some(2 + i);
                break;
            }
        }
        if let Some(h) = header
            && h + len <= 4096
        {
            assert_eq!(h + len, bytes.len(), "{}: remaining length {len} does not match the bytes", r.name);
        }
    }
}

/// Every row, one after the other; after each one a fresh client must still be served.
#[tokio::test]
async fn every_row_ends_the_connection_as_the_spec_says() {
    let b = TestBroker::start_with(table_config).await;
    let mut failures = Vec::new();
    for (i, r) in ROWS.iter().enumerate() {
        if let Err(e) = run_row(b.addr, &format!("row-{i}"), r).await {
            failures.push(format!("row {i} `{}`: {e}", r.name));
        }
        if let Err(e) = healthy(b.addr, &i.to_string()).await {
            panic!("broker unhealthy after row {i} `{}`: {e}", r.name);
        }
    }
    b.stop().await;
    report(&failures);
}

/// All rows at once, one connection each; afterwards publish/subscribe still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rows_at_once_leave_the_broker_working() {
    let b = TestBroker::start_with(table_config).await;
    let addr = b.addr;
    let mut set = JoinSet::new();
    for (i, r) in ROWS.iter().enumerate() {
        set.spawn(async move {
            run_row(addr, &format!("conc-{i}"), r).await.map_err(|e| format!("row {i} `{}`: {e}", r.name))
        });
    }
    let mut failures = Vec::new();
    while let Some(res) = set.join_next().await {
        if let Err(e) = res.expect("row task does not panic") {
            failures.push(e);
        }
    }
    healthy(addr, "after-all").await.expect("broker healthy after all rows at once");
    pubsub_works(addr, "after-all").await.expect("publish/subscribe after all rows at once");
    b.stop().await;
    report(&failures);
}

/// xorshift64: a tiny deterministic PRNG for the garbage test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// First bytes of every client packet type with valid and invalid flags, so that much of the
/// garbage gets past the fixed header into the body decoders.
const FIRST_BYTES: [u8; 20] = [
    0x10, 0x20, 0x30, 0x32, 0x34, 0x36, 0x39, 0x3b, 0x40, 0x50, 0x62, 0x60, 0x70, 0x82, 0xa2, 0xc0, 0xe0,
    0xf0, 0x00, 0x90,
];

/// One case: maybe a valid CONNECT first, then one to three random packets, each either pure
/// noise or a plausible first byte and a remaining length that frames the random body.
fn garbage(rng: &mut XorShift, case: usize) -> Vec<u8> {
    let mut out = match case % 4 {
        0 => Vec::new(),
        1 => connect_bytes(V311, &format!("g{case}")),
        _ => connect_bytes(V5, &format!("g{case}")),
    };
    for _ in 0..1 + rng.below(3) {
        let len = if rng.below(8) == 0 { rng.below(600) } else { rng.below(40) };
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            out.extend(body);
        } else {
            out.extend(frame(FIRST_BYTES[rng.below(FIRST_BYTES.len() as u64)], &body));
        }
    }
    out
}

/// Sends `bytes`, ends the stream and waits for the broker to close its side.
async fn feed(addr: SocketAddr, bytes: Vec<u8>) -> Result<(), String> {
    let mut c = RawClient::connect(addr).await;
    let _ = c.stream.write_all(&bytes).await;
    let _ = c.stream.shutdown().await;
    read_to_close(&mut c).await.map(drop).map_err(|e| format!("{e}; sent {bytes:02x?}"))
}

/// A few thousand random byte strings on fresh connections never kill or wedge the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_never_kills_the_broker() {
    const CASES: usize = 3000;
    const BATCH: usize = 100;
    let b = TestBroker::start_with(table_config).await;
    let addr = b.addr;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for batch in 0..CASES / BATCH {
        let mut set = JoinSet::new();
        for j in 0..BATCH {
            let case = batch * BATCH + j;
            let bytes = garbage(&mut rng, case);
            set.spawn(async move { feed(addr, bytes).await.map_err(|e| format!("case {case}: {e}")) });
        }
        while let Some(res) = set.join_next().await {
            res.expect("garbage task does not panic").unwrap();
        }
        healthy(addr, &format!("garbage-{batch}")).await.expect("broker healthy during garbage");
    }
    pubsub_works(addr, "after-garbage").await.expect("publish/subscribe after garbage");
    b.stop().await;
}

/// A client that stops in the middle of a packet, one that stops in the middle of its CONNECT
/// and one that never sends a byte block nobody else; the half PUBLISH completes fine later,
/// and the silent pre-CONNECT clients are closed by the connect timeout.
#[tokio::test]
async fn a_half_sent_packet_and_silence_block_no_one() {
    let b = TestBroker::start_with(|c| c.mqtt.connect_timeout = Duration::from_secs(2)).await;
    // A subscriber for the half-sent PUBLISH.
    let mut sub = connected(b.addr, V311, "half-sub").await.unwrap();
    send(&mut sub, &subscribe_bytes(b"abcde")).await.unwrap();
    assert!(matches!(next_packet(&mut sub).await.unwrap(), Some(Packet::SubAck(_))));
    // PUBLISH "abcde" payload "xyz": 30 0a 00 05 61 62 63 64 65 78 79 7a; only 5 bytes go now.
    let publish = publish_bytes(b"abcde", b"xyz");
    let mut half = connected(b.addr, V311, "half-publish").await.unwrap();
    send(&mut half, &publish[..5]).await.unwrap();
    // Half a CONNECT, and no bytes at all.
    let mut half_connect = RawClient::connect(b.addr).await;
    send(&mut half_connect, &connect_bytes(V311, "half-connect")[..4]).await.unwrap();
    let mut silent = RawClient::connect(b.addr).await;

    let started = Instant::now();
    healthy(b.addr, "during-half").await.unwrap();
    pubsub_works(b.addr, "during-half").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "other clients waited {:?} behind the silent ones",
        started.elapsed()
    );

    // The rest of the PUBLISH arrives: it is delivered and the publisher is still served.
    send(&mut half, &publish[5..]).await.unwrap();
    match next_packet(&mut sub).await.unwrap() {
        Some(Packet::Publish(p)) => assert_eq!((&p.topic[..], &p.payload[..]), (&b"abcde"[..], &b"xyz"[..])),
        other => panic!("expected the completed PUBLISH, got {other:?}"),
    }
    ping(&mut half).await.unwrap();

    // No CONNECT within mqtt.connect_timeout: closed without a CONNACK.
    assert_eq!(read_to_close(&mut half_connect).await.unwrap(), Vec::<u8>::new());
    assert_eq!(read_to_close(&mut silent).await.unwrap(), Vec::<u8>::new());
    b.stop().await;
}
