//! The `$SYS/broker/...` publisher: every `mqtt.sys_interval` it publishes the broker's
//! numbers as retained QoS 0 messages under Mosquitto's topic names, so tools built for
//! Mosquitto (`mosquitto_sub -t '$SYS/#'`, mosquitto-exporter) keep working.
//!
//! Values come from the process-wide [`crate::metrics`] and the broker; a topic is published
//! again only when its value changed (`uptime` every time). `load/.../{1,5,15}min` are
//! exponentially decaying averages of the per-minute rate, computed as Mosquitto does.
//! Messages go through [`Broker::publish`] with no publisher; `$SYS` topics are not matched by
//! `#` or `+` subscriptions, only by filters that start with `$SYS`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::debug;

use crate::broker::Broker;
use crate::metrics::{self, reasons::DropReason};
use crate::model::Message;
use dataloom_codec::{Properties, QoS};

/// Starts the publisher; it stops when `shutdown` turns true. A zero interval disables it.
pub fn spawn(broker: Arc<Broker>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut sys = Sys::new(broker);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => sys.publish_all(),
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            }
        }
    });
}

/// Running totals the `load/...` averages are computed from.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    messages_received: u64,
    messages_sent: u64,
    publish_received: u64,
    publish_sent: u64,
    publish_dropped: u64,
    bytes_received: u64,
    bytes_sent: u64,
    connections: u64,
}

impl Totals {
    fn now() -> Totals {
        let m = metrics::get();
        let sum = |cs: &[prometheus::IntCounter]| cs.iter().map(prometheus::IntCounter::get).sum();
        let dropped =
            [DropReason::QueueFull, DropReason::Expired, DropReason::TooLarge, DropReason::OfflineQos0]
                .iter()
                .map(|r| m.dropped_count(*r))
                .sum();
        Totals {
            messages_received: sum(&m.packets_received),
            messages_sent: sum(&m.packets_sent),
            publish_received: sum(&m.messages_received),
            publish_sent: sum(&m.messages_sent),
            publish_dropped: dropped,
            bytes_received: m.bytes_received.get(),
            bytes_sent: m.bytes_sent.get(),
            connections: m.connections_opened(),
        }
    }

    /// (`load/...` topic stem, value) pairs.
    fn loads(&self) -> [(&'static str, u64); 7] {
        [
            ("messages/received", self.messages_received),
            ("messages/sent", self.messages_sent),
            ("publish/received", self.publish_received),
            ("publish/sent", self.publish_sent),
            ("bytes/received", self.bytes_received),
            ("bytes/sent", self.bytes_sent),
            ("connections", self.connections),
        ]
    }
}

/// The publisher's state between ticks.
struct Sys {
    broker: Arc<Broker>,
    started: Instant,
    last: Option<(Instant, Totals)>,
    /// Per-minute load averages by (stem, window index).
    load: HashMap<(&'static str, usize), f64>,
    /// Last published payload per topic.
    sent: HashMap<String, String>,
    max_connected: i64,
}

const WINDOWS: [(&str, f64); 3] = [("1min", 1.0), ("5min", 5.0), ("15min", 15.0)];

impl Sys {
    fn new(broker: Arc<Broker>) -> Sys {
        Sys {
            broker,
            started: Instant::now(),
            last: None,
            load: HashMap::new(),
            sent: HashMap::new(),
            max_connected: 0,
        }
    }

    fn publish_all(&mut self) {
        let m = metrics::get();
        let now = Instant::now();
        let totals = Totals::now();
        let connected = m.online().max(0);
        self.max_connected = self.max_connected.max(connected);
        let total = i64::try_from(self.broker.session_count()).unwrap_or(i64::MAX);

        let mut values: Vec<(String, String)> = vec![
            ("version".into(), format!("dataloom version {}", env!("CARGO_PKG_VERSION"))),
            ("uptime".into(), format!("{} seconds", self.started.elapsed().as_secs())),
            ("clients/connected".into(), connected.to_string()),
            ("clients/active".into(), connected.to_string()),
            ("clients/disconnected".into(), total.saturating_sub(connected).max(0).to_string()),
            ("clients/inactive".into(), total.saturating_sub(connected).max(0).to_string()),
            ("clients/total".into(), total.to_string()),
            ("clients/maximum".into(), self.max_connected.to_string()),
            ("messages/received".into(), totals.messages_received.to_string()),
            ("messages/sent".into(), totals.messages_sent.to_string()),
            ("publish/messages/received".into(), totals.publish_received.to_string()),
            ("publish/messages/sent".into(), totals.publish_sent.to_string()),
            ("publish/messages/dropped".into(), totals.publish_dropped.to_string()),
            ("bytes/received".into(), totals.bytes_received.to_string()),
            ("bytes/sent".into(), totals.bytes_sent.to_string()),
            ("retained messages/count".into(), self.broker.retained_count().to_string()),
            ("subscriptions/count".into(), self.broker.subscription_count().to_string()),
        ];
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                for ((stem, cur), (_, prev)) in totals.loads().into_iter().zip(before.loads()) {
                    let per_minute = cur.saturating_sub(prev) as f64 * 60.0 / secs;
                    for (i, (name, minutes)) in WINDOWS.iter().enumerate() {
                        let avg = self.load.entry((stem, i)).or_insert(per_minute);
                        let decay = (-secs / (60.0 * minutes)).exp();
                        *avg = per_minute + decay * (*avg - per_minute);
                        values.push((format!("load/{stem}/{name}"), format!("{avg:.2}")));
                    }
                }
            }
        }
        self.last = Some((now, totals));

        for (topic, value) in values {
            if topic != "uptime" && self.sent.get(&topic) == Some(&value) {
                continue;
            }
            self.publish(&topic, &value);
            self.sent.insert(topic, value);
        }
    }

    fn publish(&self, topic: &str, value: &str) {
        let topic = format!("$SYS/broker/{topic}");
        let msg = Message {
            topic: Arc::from(topic.as_str()),
            topic_bytes: Bytes::from(topic.clone()),
            payload: Bytes::from(value.to_owned()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
            charge: Default::default(),
            stamp: crate::model::Stamp::default(),
        };
        if let Err(e) = self.broker.publish(Arc::new(msg), Vec::new()) {
            debug!(error = %e, %topic, "cannot publish $SYS topic");
        }
    }
}
