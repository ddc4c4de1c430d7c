//! Installing a schema: the retained `$schema/` message of a registration is routed and
//! stored like any retained PUBLISH, then the schema is put in force and the retained values
//! it refuses are counted.

use std::sync::Arc;

use bytes::Bytes;

use super::SchemaGate;
use crate::broker::{Broker, Published};
use crate::model::Message;
use crate::schema::document::Compiled;
use crate::schema::filter::topic_of_filter;
use crate::schema::{FILTER_PROPERTY, VERSION_PROPERTY};
use crate::store::{Op, StoreError};
use dataloom_codec::{Properties, QoS};

/// What installing a schema did.
#[derive(Debug)]
pub struct Installed {
    pub version: u64,
    /// The document equals the one in force (the version was kept).
    pub unchanged: bool,
    /// Retained values under the filter, governed by this schema, that do not validate.
    pub invalid_retained: usize,
    /// The routing of the `$schema/` message.
    pub published: Published,
}

impl SchemaGate {
    /// Registers `compiled` for `filter` (call under [`Registry::lock_registrations`]):
    /// picks the version (kept for an identical document, else the next one), publishes the
    /// retained `$schema/` message with its `filter`/`version` user properties (built from
    /// `template`, the client's PUBLISH, when there is one) together with `extra` ops, puts
    /// the schema in force and counts the retained values it refuses.
    ///
    /// # Errors
    /// [`StoreError`] when the store refuses writes; the previous schema stays.
    pub(super) fn install(
        &self,
        broker: &Broker,
        filter: &str,
        compiled: Compiled,
        payload: Bytes,
        template: Option<&Message>,
        extra: Vec<Op>,
    ) -> Result<Installed, StoreError> {
        let current = self.get(filter);
        let unchanged = current.as_ref().is_some_and(|c| c.document == compiled.0);
        let version = match &current {
            Some(c) if unchanged => c.version,
            Some(c) => c.version + 1,
            None => 1,
        };
        let msg = schema_message(filter, version, payload, template);
        let published = broker.publish(Arc::new(msg), extra)?;
        self.put(filter, version, compiled);
        let invalid_retained = self.count_invalid(broker, filter, &|_| true);
        Ok(Installed { version, unchanged, invalid_retained, published })
    }

    /// Retained values under `filter` that its schema governs and refuses, among the topics
    /// `readable` accepts.
    pub(super) fn count_invalid(
        &self,
        broker: &Broker,
        filter: &str,
        readable: &dyn Fn(&str) -> bool,
    ) -> usize {
        let Some(schema) = self.get(filter) else { return 0 };
        broker
            .retained_under(filter)
            .iter()
            .filter(|m| {
                readable(&m.topic)
                    && self.lookup(&m.topic).is_some_and(|s| Arc::ptr_eq(&s, &schema))
                    && !schema.accepts(&m.payload)
            })
            .count()
    }
}

/// The retained `$schema/` message of a registration: canonical topic, QoS 1 unless the
/// client's PUBLISH says otherwise, the client's properties with `filter` and `version` set by
/// the broker, no expiry (a schema stays until removed).
fn schema_message(filter: &str, version: u64, payload: Bytes, template: Option<&Message>) -> Message {
    let topic = topic_of_filter(filter);
    let mut properties = template.map(|m| m.properties.clone()).unwrap_or_else(|| Properties {
        content_type: Some("application/schema+json".into()),
        ..Properties::default()
    });
    properties.user_properties.retain(|(k, _)| k != FILTER_PROPERTY && k != VERSION_PROPERTY);
    properties.user_properties.push((FILTER_PROPERTY.into(), filter.into()));
    properties.user_properties.push((VERSION_PROPERTY.into(), version.to_string()));
    Message {
        topic: Arc::from(topic.as_str()),
        topic_bytes: Bytes::from(topic),
        payload,
        qos: template.map_or(QoS::AtLeastOnce, |m| m.qos),
        retain: true,
        properties,
        expires_at: None,
        publisher: template.and_then(|m| m.publisher),
        charge: Default::default(),
        stamp: crate::model::Stamp::default(),
    }
}
