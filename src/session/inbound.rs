//! Packets from the client after CONNECT: PUBLISH (topic aliases, QoS 1/2 receive flows,
//! exactly-once for QoS 2), acks of our messages, SUBSCRIBE/UNSUBSCRIBE, PINGREQ, DISCONNECT.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;

use super::conn::Conn;
use super::outbound::write_ack;
use super::{Close, Violation};
use crate::broker::session::Phase;
use crate::broker::session::Session;
use crate::broker::{Broker, NewSubscription, Qos2Arrival, ReplayFrom};
use crate::model::Message;
use crate::model::SubOptions;
use crate::store::Commit;
use dataloom_codec::topic;
use dataloom_codec::{
    Ack, Disconnect, Packet, Properties, Publish, QoS, SubAck, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe, encode, reason,
};

/// The properties of a PUBLISH or will that travel with the message to subscribers.
pub fn forwarded_properties(p: &Properties) -> Properties {
    Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..Properties::default()
    }
}

impl Conn {
    /// Handles one decoded packet; an `Err` ends the connection.
    pub(super) fn handle_packet(&mut self, p: Packet) -> Result<(), Close> {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                self.ctx.broker.outgoing_completed(&self.session, a.pkid, Phase::AwaitAck);
                Ok(())
            }
            Packet::PubRec(a) => {
                let (broker, version) = (&self.ctx.broker, self.version);
                self.out.on_pubrec(broker, &self.session, &a, version, &mut self.pending, &mut self.wbuf);
                Ok(())
            }
            Packet::PubComp(a) => {
                self.ctx.broker.outgoing_completed(&self.session, a.pkid, Phase::AwaitComp);
                Ok(())
            }
            Packet::PubRel(a) => {
                let (code, commit) = match self.ctx.broker.qos2_released(&self.session, a.pkid) {
                    Some(commit) => (reason::SUCCESS, commit),
                    None => (reason::PACKET_IDENTIFIER_NOT_FOUND, Commit::done()),
                };
                self.ack(Packet::PubComp, a.pkid, commit, code);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                encode(&Packet::PingResp, self.version, &mut self.wbuf);
                crate::metrics::get().packets_sent[crate::metrics::pt::PINGRESP].inc();
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Auth(_) => Err(Close::Protocol(Violation::AuthWithoutMethod)),
            other => {
                debug!(packet = other.name(), "unexpected packet from client");
                Err(Close::Protocol(Violation::PacketNotFromClient))
            }
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let _timer = crate::metrics::get().publish_received(p.qos);
        let topic = self.resolve_alias(&p)?;
        let topic_str = std::str::from_utf8(&topic).map_err(|_| Close::Protocol(Violation::TopicNotUtf8))?;
        if let Err(e) = topic::check_publish_name(topic_str, self.ctx.mqtt.max_topic_levels) {
            return self.refuse_topic_name(p.qos, p.pkid, e);
        }
        let mut extra = Vec::new();
        // Receive Maximum is a v5 contract: QoS 1 messages whose PUBACK is still held back and
        // QoS 2 ids not yet released count against it [MQTT 5 §3.3.4]. A 3.1.1 client never
        // learns it, so its unreleased ids are bounded only by the 16-bit identifier space.
        let room = self
            .version
            .is_v5()
            .then(|| usize::from(self.ctx.mqtt.receive_maximum).saturating_sub(self.pending.held_pubacks()));
        if p.qos == QoS::AtLeastOnce
            && room.is_some_and(|r| self.ctx.broker.qos2_unreleased(&self.session) >= r)
        {
            return Err(Close::Protocol(Violation::ReceiveMaximumExceeded));
        }
        if p.qos == QoS::ExactlyOnce {
            match self.ctx.broker.qos2_arrived(&self.session, p.pkid, room) {
                Qos2Arrival::Duplicate => {
                    self.ack(Packet::PubRec, p.pkid, Commit::done(), reason::SUCCESS);
                    return Ok(());
                }
                Qos2Arrival::TooMany => return Err(Close::Protocol(Violation::ReceiveMaximumExceeded)),
                Qos2Arrival::New(ops) => extra = ops,
            }
        }
        if let Some(shed) = self.shed_publish(&p) {
            return shed;
        }
        if !self.perms.may_publish(topic_str) {
            return self.refuse_forbidden(p.qos, p.pkid, topic_str);
        }
        let msg = Message {
            topic: Arc::from(topic_str),
            topic_bytes: topic.clone(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: forwarded_properties(&p.properties),
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            publisher: Some(self.session.id),
            charge: Default::default(),
            stamp: crate::model::Stamp::default(),
        };
        let schemas = &self.ctx.schemas;
        let who = (&*self.session.client_id, &mut self.schema_memo);
        let routed = match schemas.publish(
            &self.ctx.broker,
            Arc::new(msg.charged(self.ctx.broker.memory())),
            extra,
            who,
        ) {
            Ok(routed) => routed,
            Err(refusal) => return self.refuse_publish(topic_str, p.qos, p.pkid, refusal),
        };
        // The writes of this message are queued: if the writer is behind, read no more.
        self.awaiting_store = self.ctx.broker.store().backlog().is_some_and(|b| b.is_full());
        let (code, commit) = match routed.published {
            // Matched but dropped (a full queue) is counted as that drop, not as no subscribers.
            Ok(published) if published.matched == 0 => {
                crate::metrics::get().no_subscribers(p.retain);
                (reason::NO_MATCHING_SUBSCRIBERS, published.commit)
            }
            Ok(published) => {
                self.blocked.extend(published.blocked);
                (reason::SUCCESS, published.commit)
            }
            Err(e) => {
                let code = match e {
                    crate::store::StoreError::DiskFull(_) => reason::QUOTA_EXCEEDED,
                    _ => reason::UNSPECIFIED_ERROR,
                };
                tracing::warn!(error = %e, "message not accepted: the store refuses writes");
                if !self.version.is_v5() && p.qos != QoS::AtMostOnce {
                    return Err(Close::Server(code, "store refuses writes"));
                }
                self.session.qos2_abandon(p.pkid);
                (code, Commit::done())
            }
        };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack_noted(Packet::PubAck, p.pkid, commit, code, routed.note),
            QoS::ExactlyOnce => self.ack_noted(Packet::PubRec, p.pkid, commit, code, routed.note),
        }
        Ok(())
    }

    /// Sends an ack with `code` once `commit` is durable; a failed commit is answered with
    /// 0x80 in v5 and closes a 3.x connection (which has no negative ack).
    fn ack(&mut self, kind: fn(Ack) -> Packet, pkid: u16, commit: Commit, code: u8) {
        let version = self.version;
        let fail = version.is_v5().then_some(reason::UNSPECIFIED_ERROR);
        crate::metrics::get().packet_sent(&kind(Ack { pkid, code, properties: Properties::default() }));
        self.pending
            .respond(commit, &mut self.wbuf, code, fail, |c, out| write_ack(kind, pkid, c, version, out));
    }

    /// Resolves or records a v5 topic alias; returns the topic name to route on.
    fn resolve_alias(&mut self, p: &Publish) -> Result<Bytes, Close> {
        let Some(alias) = p.properties.topic_alias else {
            return Ok(p.topic.clone());
        };
        if alias == 0 || alias > self.ctx.mqtt.topic_alias_maximum {
            return Err(Close::Protocol(Violation::TopicAliasOutOfRange));
        }
        if p.topic.is_empty() {
            return self.aliases_in.get(&alias).cloned().ok_or(Close::Protocol(Violation::UnknownTopicAlias));
        }
        self.aliases_in.insert(alias, p.topic.clone());
        Ok(p.topic.clone())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        self.check_filter_count(s.filters.len())?;
        // In a cluster, retained state acknowledged on any node must be in this snapshot:
        // the SUBSCRIBE waits (reading nothing more) until this node caught up.
        let wants_retained = s.filters.iter().any(|f| {
            f.retain_handling != dataloom_codec::RetainHandling::Never && !f.filter.starts_with("$share/")
        });
        if wants_retained && let Some(wait) = self.ctx.broker.cluster_sync() {
            self.deferred = Some((s, wait));
            return Ok(());
        }
        self.subscribe_now(s)
    }

    /// Subscribes and queues the retained snapshot (after the cluster sync, in a cluster).
    pub(super) fn subscribe_now(&mut self, s: Subscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut accepted = Vec::with_capacity(s.filters.len());
        let mut room = SubscriptionRoom::new(self.ctx.mqtt.max_subscriptions_per_client);
        let replay = match self.replay_asked(&s) {
            Ok(r) => r,
            Err(why) => {
                debug!(%why, "SUBSCRIBE refused: bad replay property");
                let refused = vec![reason::IMPLEMENTATION_SPECIFIC_ERROR; s.filters.len()];
                let suback = SubAck { pkid: s.pkid, codes: refused, properties: Properties::default() };
                self.pending.respond(Commit::done(), &mut self.wbuf, 0, None, |_, out| {
                    encode(&Packet::SubAck(suback.clone()), self.version, out);
                });
                return Ok(());
            }
        };
        for f in &s.filters {
            match self.judge_filter(f, &mut room)? {
                Ok((group, plain)) => {
                    codes.push(f.qos as u8);
                    accepted.push((codes.len() - 1, f, group, plain));
                }
                Err(code) => codes.push(code),
            }
        }
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let subs: Vec<NewSubscription<'_>> = accepted
            .iter()
            .map(|&(_, f, group, plain)| NewSubscription {
                filter: &f.filter,
                group,
                plain,
                opts: SubOptions {
                    qos: f.qos,
                    no_local: f.no_local,
                    retain_as_published: f.retain_as_published,
                    retain_handling: f.retain_handling,
                    sub_id,
                },
                replay,
            })
            .collect();
        let version = self.version;
        let out = &mut self.out;
        let done = self.ctx.broker.subscribe(&self.session, &subs, &mut |d| out.fits(d, version));
        let mut retained = vec![0; codes.len()];
        for (&(i, ..), n) in accepted.iter().zip(done.retained) {
            retained[i] = n;
        }
        let retained = version.is_v5().then(|| retained_property(&retained));
        let (fail, pkid, max_packet) =
            (version.is_v5().then_some(reason::UNSPECIFIED_ERROR), s.pkid, self.out.max_packet());
        self.pending.respond(done.commit, &mut self.wbuf, 0, fail, |c, out| {
            let start = out.len();
            let mut suback = SubAck { pkid, codes: codes.clone(), properties: Properties::default() };
            if c != 0 {
                suback.codes = vec![c; codes.len()];
            } else if let Some(p) = &retained {
                suback.properties.user_properties.push(p.clone());
                encode(&Packet::SubAck(suback.clone()), version, out);
                if out.len() - start <= max_packet {
                    return;
                }
                // Left out rather than exceed the client's Maximum Packet Size.
                out.truncate(start);
                suback.properties.user_properties.clear();
            }
            encode(&Packet::SubAck(suback), version, out);
        });
        crate::metrics::get().packets_sent[crate::metrics::pt::SUBACK].inc();
        self.ctx.broker.start_replays(done.replays);
        Ok(())
    }

    /// The history a v5 SUBSCRIBE asks for with User Property `replay` (issue 17).
    ///
    /// # Errors
    /// What is wrong with the property's value.
    fn replay_asked(&self, s: &Subscribe) -> Result<Option<ReplayFrom>, String> {
        if !self.version.is_v5() {
            return Ok(None);
        }
        let mut found = None;
        for (k, v) in &s.properties.user_properties {
            if k == "replay" && found.replace(ReplayFrom::parse(v)?).is_some() {
                return Err("replay is given more than once".into());
            }
        }
        Ok(found)
    }

    /// What one SUBSCRIBE filter gets: `Ok((share group, filter))` to subscribe, or `Err` of
    /// the SUBACK refusal code: 0x8F over `mqtt.max_topic_levels` (a well-formed filter the
    /// server does not accept), 0x87 not authorized, 0x97 over
    /// `mqtt.max_subscriptions_per_client` (3.x: all 0x80). A filter that breaks the filter
    /// rules of the specification closes the connection.
    fn judge_filter<'f>(
        &self,
        f: &'f SubscribeFilter,
        room: &mut SubscriptionRoom<'f>,
    ) -> Result<Judged<'f>, Close> {
        let (group, plain) = match topic::parse_subscription(&f.filter, self.ctx.mqtt.max_topic_levels) {
            Ok(parsed) => parsed,
            Err(e @ topic::TopicError::TooManyLevels { .. }) => {
                debug!(filter = %f.filter, error = %e, "SUBSCRIBE refused: over mqtt.max_topic_levels");
                return Ok(Err(reason::TOPIC_FILTER_INVALID));
            }
            Err(e) => {
                debug!(filter = %f.filter, error = %e, "invalid topic filter");
                return Err(Close::Protocol(Violation::InvalidTopicFilter(e)));
            }
        };
        if group.is_some() && f.no_local {
            return Err(Close::Protocol(Violation::NoLocalOnShared));
        }
        if !self.perms.may_subscribe(plain) {
            debug!(filter = %f.filter, "SUBSCRIBE not authorized");
            crate::auth::count_denial(crate::auth::action::SUBSCRIBE);
            return Ok(Err(reason::NOT_AUTHORIZED));
        }
        if !room.admits(&self.ctx.broker, &self.session, &f.filter) {
            debug!(filter = %f.filter, "SUBSCRIBE over mqtt.max_subscriptions_per_client");
            return Ok(Err(reason::QUOTA_EXCEEDED));
        }
        Ok(Ok((group, plain)))
    }

    /// A PUBLISH the connection may not make: v5 QoS 1/2 get PUBACK/PUBREC 0x87; otherwise
    /// `auth.on_forbidden_publish` acknowledges and drops it, or closes [MQTT-3.3.5-2].
    fn refuse_forbidden(&mut self, qos: QoS, pkid: u16, topic: &str) -> Result<(), Close> {
        crate::auth::count_denial(crate::auth::action::PUBLISH);
        crate::metrics::get().dropped(crate::metrics::reasons::DropReason::NotAuthorized);
        debug!(%topic, "PUBLISH not authorized");
        let kind = if qos == QoS::ExactlyOnce { Packet::PubRec } else { Packet::PubAck };
        if self.version.is_v5() && qos != QoS::AtMostOnce {
            self.session.qos2_abandon(pkid);
            let note = Some(format!("not authorized to publish to {topic}"));
            self.ack_noted(kind, pkid, Commit::done(), reason::NOT_AUTHORIZED, note);
            return Ok(());
        }
        match self.ctx.auth.settings().on_forbidden_publish {
            crate::auth::OnForbidden::Drop => {
                if qos != QoS::AtMostOnce {
                    // The QoS 2 id stays known so the client's PUBREL completes.
                    self.ack(kind, pkid, Commit::done(), reason::SUCCESS);
                }
                Ok(())
            }
            crate::auth::OnForbidden::Disconnect => {
                self.session.qos2_abandon(pkid);
                Err(Close::Server(reason::NOT_AUTHORIZED, "PUBLISH not authorized"))
            }
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        self.check_filter_count(u.filters.len())?;
        let (existed, commit) = self.ctx.broker.unsubscribe(&self.session, &u.filters);
        let codes: Vec<u8> = existed
            .iter()
            .map(|e| if *e { reason::SUCCESS } else { reason::NO_SUBSCRIPTION_EXISTED })
            .collect();
        let (version, pkid) = (self.version, u.pkid);
        let fail = version.is_v5().then_some(reason::UNSPECIFIED_ERROR);
        self.pending.respond(commit, &mut self.wbuf, 0, fail, |c, out| {
            let codes = if c == 0 { codes.clone() } else { vec![c; codes.len()] };
            encode(
                &Packet::UnsubAck(UnsubAck { pkid, codes, properties: Properties::default() }),
                version,
                out,
            );
        });
        crate::metrics::get().packets_sent[crate::metrics::pt::UNSUBACK].inc();
        Ok(())
    }

    /// `mqtt.max_filters_per_subscribe`: a SUBSCRIBE or UNSUBSCRIBE with more filters closes
    /// the connection (v5: DISCONNECT 0x97 Quota exceeded).
    fn check_filter_count(&self, n: usize) -> Result<(), Close> {
        let max = self.ctx.mqtt.max_filters_per_subscribe;
        if max > 0 && n > max {
            tracing::info!(
                filters = n,
                max,
                "too many filters in one packet (mqtt.max_filters_per_subscribe)"
            );
            return Err(Close::Server(reason::QUOTA_EXCEEDED, "too many topic filters in one packet"));
        }
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(new) = d.properties.session_expiry_interval {
            if self.session.expiry() == 0 && new != 0 {
                return Err(Close::Protocol(Violation::SessionExpiryAfterZero));
            }
            let _ = self.ctx.broker.set_expiry(&self.session, new.min(self.ctx.mqtt.max_session_expiry));
        }
        Err(Close::ClientDisconnect(d.code))
    }
}

/// What a SUBSCRIBE filter gets: its share group (if any) and filter to subscribe, or the
/// SUBACK refusal code.
type Judged<'f> = Result<(Option<&'f str>, &'f str), u8>;

/// How many new subscriptions one SUBSCRIBE may still add under
/// `mqtt.max_subscriptions_per_client` (0: no limit).
struct SubscriptionRoom<'a> {
    max: usize,
    held: Option<usize>,
    added: HashSet<&'a str>,
}

impl<'a> SubscriptionRoom<'a> {
    fn new(max: usize) -> Self {
        SubscriptionRoom { max, held: None, added: HashSet::new() }
    }

    /// True when `filter` may be subscribed: it replaces one the session holds, it was added
    /// earlier in this packet, or there is room for one more.
    fn admits(&mut self, broker: &Broker, session: &Session, filter: &'a str) -> bool {
        if self.max == 0 || self.added.contains(filter) {
            return true;
        }
        let (held, exists) = broker.subscription_status(session, filter);
        if exists {
            return true;
        }
        let held = *self.held.get_or_insert(held);
        if held + self.added.len() >= self.max {
            return false;
        }
        self.added.insert(filter);
        true
    }
}

/// The v5 SUBACK's User Property `retained`: how many retained messages follow for each
/// filter, comma-separated in the SUBSCRIBE's order (`retained=12,0,3`).
fn retained_property(counts: &[usize]) -> (String, String) {
    let value = counts.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    ("retained".to_string(), value)
}
